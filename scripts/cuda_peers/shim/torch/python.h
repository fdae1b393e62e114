// Stand-in for <torch/python.h> when a peer's binding file (mamba-ssm's selective_scan.cpp, causal-conv1d's
// causal_conv1d.cpp) is compiled without Python headers: the build machine has no CPython of the GPU machine's
// version. It gives the ATen API those files use and turns their PYBIND11_MODULE block into an unused function; the
// peer's *_ops.cpp beside build.sh registers the entry points with the dispatcher instead.
#pragma once
#include <ATen/ATen.h>
#include <torch/types.h>

namespace ssmkit_shim {
struct Module {
    template <typename... Args>
    void def(Args&&...) {}
};
}  // namespace ssmkit_shim

#define PYBIND11_MODULE(name, m) [[maybe_unused]] static void ssmkit_unused_module(ssmkit_shim::Module& m)
