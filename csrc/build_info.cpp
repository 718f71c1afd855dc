// pybind11 surface of the compiled core: what was built and how. Kept free of
// torch headers (pybind11 and the stable ABI's TORCH_TARGET_VERSION do not mix);
// linking this module with the op objects is what registers the CPU kernels.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#ifndef DATADIET_VERSION
#define DATADIET_VERSION "unknown"
#endif

namespace py = pybind11;

namespace {

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = DATADIET_VERSION;
  std::vector<std::string> backends{"cpu"};
#ifdef DATADIET_WITH_CUDA
  backends.push_back("cuda");
#endif
  d["compiled_backends"] = backends;
  d["cuda_archs"] = std::string(DATADIET_CUDA_ARCHS);
  d["compiler"] = compiler();
  d["cpu_flags"] = DATADIET_CPU_FLAGS;
  d["openmp_threads"] = omp_get_max_threads();
  d["torch_built_with"] = DATADIET_TORCH_BUILT_WITH;
  d["abi"] = "LibTorch stable ABI (torch >= 2.10)";
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "datadiet compiled core; importing it registers the torch.ops.datadiet CPU kernels";
  m.def("build_info", &build_info, "What this build of datadiet's compiled core contains.");
}
