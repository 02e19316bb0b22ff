//! CUDA kernels of the spline (compiled with NVRTC at first use). Filled in by the `cuda` work.
