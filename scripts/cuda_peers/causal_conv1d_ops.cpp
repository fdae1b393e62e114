// causal-conv1d's CUDA kernels (csrc/causal_conv1d.cpp, Dao-AILab/causal-conv1d) registered as PyTorch operators, so
// that the built library loads with torch.ops.load_library and needs no Python headers:
//     torch.ops.causal_conv1d_cuda.causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out,
//                                                    silu_activation) -> ()
//     torch.ops.causal_conv1d_cuda.causal_conv1d_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states,
//                                                    dx, dweight, dbias, dinitial_states, silu_activation) -> ()
//     torch.ops.causal_conv1d_cuda.causal_conv1d_update(x, conv_state, weight, bias, out, silu_activation,
//                                                       cache_seqlens, conv_state_indices) -> ()
// with the arguments of its pybind11 functions of the same names, which the package's cpp_functions.py calls as
// causal_conv1d_cuda.<name> (ssmkit.bench.gpu puts a module with these names in sys.modules). The outputs are
// written into the tensors passed (marked mutable in the schemas). Only this file and shim/ are ssmkit's; the kernels
// are compiled from the checkout unchanged.
#include <optional>

#include <ATen/ATen.h>
#include <torch/library.h>

void causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_,
                       const std::optional<at::Tensor>& seq_idx_, const std::optional<at::Tensor>& initial_states_,
                       at::Tensor& out, std::optional<at::Tensor>& final_states_out_, bool silu_activation);

void causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_,
                       at::Tensor& dout, const std::optional<at::Tensor>& seq_idx_,
                       const std::optional<at::Tensor>& initial_states_,
                       const std::optional<at::Tensor>& dfinal_states_, at::Tensor& dx, at::Tensor& dweight,
                       std::optional<at::Tensor>& dbias_, std::optional<at::Tensor>& dinitial_states_,
                       bool silu_activation);

void causal_conv1d_update(const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias_, at::Tensor& out, bool silu_activation,
                          const std::optional<at::Tensor>& cache_seqlens_,
                          const std::optional<at::Tensor>& conv_state_indices_);

namespace {

// The entry points take their outputs (and dout, which the backward may replace by a contiguous copy of its own) by
// non-const reference; a dispatcher kernel gets const references to the caller's tensors, whose copies share their
// storage, so writing through a copy writes the caller's tensor.
void fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const std::optional<at::Tensor>& seq_idx, const std::optional<at::Tensor>& initial_states,
         const at::Tensor& out, const std::optional<at::Tensor>& final_states_out, bool silu_activation) {
    at::Tensor out_ = out;
    std::optional<at::Tensor> final_ = final_states_out;
    causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out_, final_, silu_activation);
}

void bwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& dout,
         const std::optional<at::Tensor>& seq_idx, const std::optional<at::Tensor>& initial_states,
         const std::optional<at::Tensor>& dfinal_states, const at::Tensor& dx, const at::Tensor& dweight,
         const std::optional<at::Tensor>& dbias, const std::optional<at::Tensor>& dinitial_states,
         bool silu_activation) {
    at::Tensor dout_ = dout, dx_ = dx, dweight_ = dweight;
    std::optional<at::Tensor> dbias_ = dbias, dinitial_ = dinitial_states;
    causal_conv1d_bwd(x, weight, bias, dout_, seq_idx, initial_states, dfinal_states, dx_, dweight_, dbias_,
                      dinitial_, silu_activation);
}

void update(const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
            const std::optional<at::Tensor>& bias, const at::Tensor& out, bool silu_activation,
            const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& conv_state_indices) {
    at::Tensor out_ = out;
    causal_conv1d_update(x, conv_state, weight, bias, out_, silu_activation, cache_seqlens, conv_state_indices);
}

}  // namespace

TORCH_LIBRARY(causal_conv1d_cuda, m) {
    m.def("causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
          "Tensor(a!) out, Tensor(b!)? final_states_out, bool silu_activation) -> ()",
          &fwd);
    m.def("causal_conv1d_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor dout, Tensor? seq_idx, "
          "Tensor? initial_states, Tensor? dfinal_states, Tensor(a!) dx, Tensor(b!) dweight, Tensor(c!)? dbias, "
          "Tensor(d!)? dinitial_states, bool silu_activation) -> ()",
          &bwd);
    m.def("causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, Tensor(b!) out, "
          "bool silu_activation, Tensor? cache_seqlens, Tensor? conv_state_indices) -> ()",
          &update);
}
