//! Sans-I/O HTTP/1.1 codec. (skeleton, being written)
