// mamba-ssm's selective scan (csrc/selective_scan/selective_scan.cpp, state-spaces/mamba) registered as PyTorch
// operators, so that the built library loads with torch.ops.load_library and needs no Python headers:
//     torch.ops.mamba_ssm_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> Tensor[]
//     torch.ops.mamba_ssm_cuda.bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus,
//                                  recompute_out_z) -> Tensor[]
// with the arguments and results of its pybind11 functions `fwd` and `bwd`, which mamba_ssm's
// selective_scan_interface calls as selective_scan_cuda.fwd / .bwd (ssmkit.bench.gpu puts a module with these two
// names in sys.modules). Only this file and shim/ are ssmkit's; the kernels are compiled from the checkout unchanged.
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

std::vector<at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C,
                                           const std::optional<at::Tensor>& D_, const std::optional<at::Tensor>& z_,
                                           const std::optional<at::Tensor>& delta_bias_, bool delta_softplus);

std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C,
                                           const std::optional<at::Tensor>& D_, const std::optional<at::Tensor>& z_,
                                           const std::optional<at::Tensor>& delta_bias_, const at::Tensor& dout,
                                           const std::optional<at::Tensor>& x_, const std::optional<at::Tensor>& out_,
                                           std::optional<at::Tensor>& dz_, bool delta_softplus, bool recompute_out_z);

namespace {

std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                            bool delta_softplus) {
    return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
}

std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                            const at::Tensor& dout, const std::optional<at::Tensor>& x,
                            const std::optional<at::Tensor>& out, const std::optional<at::Tensor>& dz,
                            bool delta_softplus, bool recompute_out_z) {
    std::optional<at::Tensor> dz_arg = dz;  // the kernel's entry takes it by non-const reference
    return selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz_arg, delta_softplus,
                              recompute_out_z);
}

}  // namespace

TORCH_LIBRARY(mamba_ssm_cuda, m) {
    m.def("fwd", &fwd);
    m.def("bwd", &bwd);
}
