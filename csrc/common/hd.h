// DD_HD marks math shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__)
#define DD_HD __host__ __device__ __forceinline__
#else
#define DD_HD inline
#endif
