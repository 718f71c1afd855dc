// pybind11 surface of the compiled core: what was built and how, and which CPU capabilities
// this machine runs. Kept free of torch headers (pybind11 and the stable ABI's
// TORCH_TARGET_VERSION do not mix); linking this module with the schema object is what
// defines the ops, and datadiet._extension then loads one _cpu_<capability> module.
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

std::vector<std::string> split(const std::string& csv) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= csv.size()) {
    size_t end = csv.find(',', start);
    if (end == std::string::npos) end = csv.size();
    if (end > start) out.push_back(csv.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// The kernel capabilities this CPU can execute, lowest first. x86-64: the microarchitecture
// levels the modules are compiled for (default = v2, avx2 = v3, avx512 = v4), asked feature by
// feature (libgcc's cpuid check, which also asks the OS whether it saves the AVX / AVX-512
// registers); feature names rather than "x86-64-v3" keep gcc < 12 and older clang building.
std::vector<std::string> cpu_capabilities() {
  std::vector<std::string> caps;
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool v2 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt");
  const bool v3 = v2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
  if (v2) caps.push_back("default");
  if (v3) caps.push_back("avx2");
  if (v4) caps.push_back("avx512");
#else
  caps.push_back("default");
#endif
  return caps;
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
  d["cpu_capabilities_built"] = split(DATADIET_CPU_CAPABILITIES);
  d["openmp_threads"] = omp_get_max_threads();
  d["torch_built_with"] = DATADIET_TORCH_BUILT_WITH;
  d["abi"] = "LibTorch stable ABI (torch >= 2.10)";
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "datadiet compiled core; importing it registers the torch.ops.datadiet CPU kernels";
  m.def("build_info", &build_info, "What this build of datadiet's compiled core contains.");
  m.def("cpu_capabilities", &cpu_capabilities, "The CPU kernel capabilities this machine runs, lowest first.");
}
