// The login page: posts the operator credential as JSON to /ui/login; control
// answers 204 with the session cookie, and the dashboard opens.
"use strict";

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.hidden = true;
  const credential = document.getElementById("credential").value.trim();
  try {
    const resp = await fetch("/ui/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ credential }),
      credentials: "same-origin",
    });
    if (resp.status === 204) {
      window.location.assign("/ui/");
      return;
    }
    let message = `login failed (${resp.status})`;
    try {
      message = (await resp.json()).error || message;
    } catch (_) {
      // not JSON: keep the status
    }
    err.textContent = message;
  } catch (e) {
    err.textContent = `cannot reach control: ${e.message}`;
  }
  err.hidden = false;
});
