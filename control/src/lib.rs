//! coremesh-control
