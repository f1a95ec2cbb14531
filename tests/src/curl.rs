//! Runs the real `curl`, for the request forms where a real client matters
//! (Host header, `http_proxy`, `--http1.0`, `Expect: 100-continue`).

use std::process::Command;

use crate::client::{parse_response_head, Response};

/// A curl invocation; proxy variables from the environment are cleared so a
/// test only ever talks to the proxy it started.
pub struct Curl {
    cmd: Command,
}

/// What curl printed: every response block (interim ones first) and the body.
#[derive(Debug)]
pub struct CurlOutput {
    /// The final response, with its body.
    pub response: Response,
    /// Interim (1xx) responses curl saw before the final one.
    pub interim: Vec<Response>,
    pub stderr: String,
    pub exit_code: i32,
}

impl Curl {
    /// `curl -sS -i --max-time 30 URL`.
    pub fn new(url: &str) -> Curl {
        if !crate::util::have_program("curl") {
            panic!("curl is not installed (scripts/install-deps.sh installs it)");
        }
        let mut cmd = Command::new("curl");
        for var in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(["-sS", "-i", "--max-time", "30", url]);
        Curl { cmd }
    }

    pub fn arg(mut self, a: &str) -> Curl {
        self.cmd.arg(a);
        self
    }

    pub fn args(mut self, a: &[&str]) -> Curl {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Curl {
        self.cmd.env(k, v);
        self
    }

    /// Runs curl where failure is the expected outcome: its exit code and
    /// stderr, nothing parsed.
    pub fn run_status(mut self) -> (i32, String) {
        let out = self.cmd.output().expect("run curl");
        let code = out.status.code().unwrap_or(-1);
        (code, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs curl and parses its `-i` output; panics if curl failed.
    pub fn run(mut self) -> CurlOutput {
        let out = self.cmd.output().expect("run curl");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        if !out.status.success() {
            panic!(
                "curl failed ({code}): {stderr}\nstdout: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let mut rest: &[u8] = &out.stdout;
        let mut interim = Vec::new();
        loop {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| {
                    panic!(
                        "curl output has no header block: {:?}",
                        String::from_utf8_lossy(rest)
                    )
                });
            let head = parse_response_head(&rest[..end + 4]).unwrap_or_else(|e| {
                panic!("curl output: {e}: {:?}", String::from_utf8_lossy(rest))
            });
            rest = &rest[end + 4..];
            if (100..200).contains(&head.status) && head.status != 101 {
                interim.push(head);
                continue;
            }
            let mut response = head;
            response.body = rest.to_vec();
            return CurlOutput {
                response,
                interim,
                stderr,
                exit_code: code,
            };
        }
    }
}
