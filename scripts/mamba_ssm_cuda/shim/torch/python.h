// Stand-in for <torch/python.h> when mamba-ssm's selective_scan.cpp is compiled without Python headers (the build
// machine has no CPython of the GPU machine's version). It gives the ATen API the file uses and turns its
// PYBIND11_MODULE block into an unused function; ops.cpp registers the two entry points with the dispatcher instead.
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
