// Device and dtype in the core: checked accessors, operand checks, and a test double of a second
// device that proves the model, the tape and the optimizer reach every kernel through the tables.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <type_traits>

#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/dispatch.h"
#include "quant/dispatch.h"
#include "tests/test_helpers.h"

using namespace autograd;
using testdata::error_of;

TEST(DType, CheckedAccessorsNameDtypeShapeAndDevice) {
  Tensor c = Tensor::zeros(Shape{2, 3}, DType::I8);
  EXPECT_EQ(c.nbytes(), 6u);
  EXPECT_EQ(c.describe(), "i8 [2, 3] on cpu");
  EXPECT_NE(c.data<int8_t>(), nullptr);
  EXPECT_EQ(error_of([&] { (void)c.data<float>(); }),
            "Tensor::data: tensor is i8 [2, 3] on cpu, expected f32");
  EXPECT_EQ(error_of([&] { (void)c.data<int32_t>(); }),
            "Tensor::data: tensor is i8 [2, 3] on cpu, expected i32");
  EXPECT_EQ(error_of([&] { (void)c.to_vector(); }),
            "to_vector: tensor is i8 [2, 3] on cpu, expected f32");
  Tensor i = Tensor::from_host(Shape{3}, std::vector<int32_t>{7, -1, 9}.data());
  EXPECT_EQ(i.data<int32_t>()[2], 9);
  EXPECT_EQ(i.element_size(), 4u);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to the even one (1).
  EXPECT_EQ(to_float(to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(to_float(to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(to_float(to_bf16(NAN))));
  EXPECT_EQ(to_float(to_bf16(-2.5f)), -2.5f);
}

// The CPU table's round_bf16 is to_bf16 per element (ties to even, NaN kept), and refuses a
// non-bf16 output naming the op; a CPU GEMM refuses pre-rounded bf16 operands.
TEST(DType, RoundBf16EntryAndItsErrors) {
  const std::vector<float> v = {1.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, NAN, 3e38f,
                                -0.0f};
  const Tensor x = Tensor::from(Shape{int64_t(v.size())}, v);
  Tensor y = Tensor::empty(x.shape(), DType::BF16);
  cpu_kernels().round_bf16(x, y);
  for (size_t i = 0; i < v.size(); ++i)
    EXPECT_EQ(y.data<bf16>()[i].bits, to_bf16(v[i]).bits) << "element " << i;
  EXPECT_EQ(to_float(y.data<bf16>()[1]), 1.0f);
  EXPECT_TRUE(std::isnan(to_float(y.data<bf16>()[4])));
  Tensor bad = Tensor::empty(x.shape(), DType::F32);
  EXPECT_NE(error_of([&] { cpu_kernels().round_bf16(x, bad); }).find("round_bf16: output"),
            std::string::npos);
  GemmArgs g;
  g.M = g.N = g.K = 1, g.A16 = y.raw();
  EXPECT_NE(error_of([&] { cpu_kernels().gemm(g); }).find("gemm"), std::string::npos);
}

TEST(Device, ParsesAndRefusesWithTheText) {
  EXPECT_EQ(parse_device("cpu"), Device::cpu());
  EXPECT_EQ(parse_device("cuda:1"), Device::cuda(1));
  EXPECT_EQ(parse_device("cuda").str(), "cuda:0");
  EXPECT_EQ(error_of([] { parse_device("gpu"); }),
            "device: 'gpu' is not a device (expected cpu, cuda or cuda:N)");
}

TEST(Ops, RefuseWrongDtypeNamingTheOp) {
  Variable x(Tensor::zeros(Shape{2, 4}, DType::I8));
  Variable g(Tensor::full(Shape{4}, 1.0f));
  EXPECT_EQ(error_of([&] { rmsnorm(x, g, 1e-5f); }),
            "rmsnorm: operand 0 is i8 [2, 4] on cpu, expected f32");
  EXPECT_EQ(error_of([&] { add(g, Variable(Tensor::zeros(Shape{4}, DType::BF16))); }),
            "add: operand 1 is bf16 [4] on cpu: bf16 activations need a device whose kernels "
            "take them (cuda)");
  EXPECT_EQ(error_of([&] {
              transpose(Variable(Tensor::zeros(Shape{2, 4}, DType::I32)), 0, 1);
            }),
            "transpose: operand 0 is i32 [2, 4] on cpu, expected f32");
}

// ---- a test double of a second device --------------------------------------------------------
// "fake" memory is host memory handed out under the CUDA device type; its kernel tables wrap the
// CPU kernels, count the calls per entry and check that every tensor argument is on the fake
// device. While it is installed the CPU tables are replaced by empty ones, so any kernel reached
// through the CPU table (a tensor left behind on the host) throws.
namespace {
std::set<std::string> g_called;
int g_foreign = 0;  // tensor arguments not on the fake device

void check_arg(const Tensor& t) {
  if (t.defined() && t.device() != Device::cuda(0)) ++g_foreign;
}
template <class T>
void check_arg(const T&) {}

template <class Table, auto Member, class F>
struct Counted;
template <class Table, auto Member, class R, class... A>
struct Counted<Table, Member, R (*)(A...)> {
  static inline const char* name = "";
  static inline const Table* base = nullptr;
  static R call(A... a) {
    g_called.insert(name);
    (check_arg(a), ...);
    return (base->*Member)(a...);
  }
};
template <class Table, auto Member>
void wrap(Table& table, const Table& base, const char* name) {
  using C = Counted<Table, Member, std::remove_cvref_t<decltype(Table{}.*Member)>>;
  C::name = name;
  C::base = &base;
  table.*Member = &C::call;
}
#define BN_WRAP(Table, table, base, entry) \
  wrap<Table, &Table::entry>(table, base, #Table "." #entry)

void* fake_alloc(size_t b, int) { return std::aligned_alloc(64, (b + 63) / 64 * 64); }
void fake_free(void* p, int) { std::free(p); }
void fake_zero(void* p, size_t b, int) { std::memset(p, 0, b); }
void fake_copy(void* d, Device, const void* s, Device, size_t b) { std::memmove(d, s, b); }
const DeviceMemory kFakeMemory{fake_alloc, fake_free, fake_zero, fake_copy};

struct FakeDevice {
  Kernels ak = cpu_kernels();
  quant::Kernels qk = quant::cpu_kernels();
  optim::Kernels ok = optim::cpu_kernels();
  Kernels empty_ak;
  quant::Kernels empty_qk;
  optim::Kernels empty_ok;
  FakeDevice() {
    const Kernels& a = cpu_kernels();
    BN_WRAP(Kernels, ak, a, fill), BN_WRAP(Kernels, ak, a, gemm), BN_WRAP(Kernels, ak, a, binary);
    BN_WRAP(Kernels, ak, a, axpy), BN_WRAP(Kernels, ak, a, mul_acc),
        BN_WRAP(Kernels, ak, a, row_sum);
    BN_WRAP(Kernels, ak, a, scale), BN_WRAP(Kernels, ak, a, sum_all),
        BN_WRAP(Kernels, ak, a, add_scalar);
    BN_WRAP(Kernels, ak, a, unary), BN_WRAP(Kernels, ak, a, unary_backward);
    BN_WRAP(Kernels, ak, a, relu2_mul), BN_WRAP(Kernels, ak, a, relu2_mul_backward);
    BN_WRAP(Kernels, ak, a, transpose), BN_WRAP(Kernels, ak, a, band_copy);
    BN_WRAP(Kernels, ak, a, embedding), BN_WRAP(Kernels, ak, a, embedding_backward);
    BN_WRAP(Kernels, ak, a, rmsnorm), BN_WRAP(Kernels, ak, a, rmsnorm_backward);
    BN_WRAP(Kernels, ak, a, softmax), BN_WRAP(Kernels, ak, a, softmax_backward);
    BN_WRAP(Kernels, ak, a, rope), BN_WRAP(Kernels, ak, a, attention);
    BN_WRAP(Kernels, ak, a, attention_backward), BN_WRAP(Kernels, ak, a, ce_chunk);
    BN_WRAP(Kernels, ak, a, ce_finish), BN_WRAP(Kernels, ak, a, ce_chunk_backward);
    const quant::Kernels& q = quant::cpu_kernels();
    BN_WRAP(quant::Kernels, qk, q, act_quantize), BN_WRAP(quant::Kernels, qk, q, count_zeros);
    BN_WRAP(quant::Kernels, qk, q, ternary), BN_WRAP(quant::Kernels, qk, q, ternary_apply);
    BN_WRAP(quant::Kernels, qk, q, act_codes), BN_WRAP(quant::Kernels, qk, q, dequantize);
    BN_WRAP(quant::Kernels, qk, q, pack_ternary), BN_WRAP(quant::Kernels, qk, q, ternary_gemm);
    const optim::Kernels& o = optim::cpu_kernels();
    BN_WRAP(optim::Kernels, ok, o, adamw), BN_WRAP(optim::Kernels, ok, o, grad_sq_chunks);
    BN_WRAP(optim::Kernels, ok, o, grad_norm_clip);
    BN_WRAP(optim::Kernels, ok, o, scale_range), BN_WRAP(optim::Kernels, ok, o, count_nonfinite);
    register_device_memory(DeviceType::CUDA, &kFakeMemory);
    register_kernels(DeviceType::CUDA, &ak);
    quant::register_kernels(DeviceType::CUDA, &qk);
    optim::register_kernels(DeviceType::CUDA, &ok);
  }
  ~FakeDevice() {
    register_device_memory(DeviceType::CUDA, nullptr);
    register_kernels(DeviceType::CUDA, nullptr);
    quant::register_kernels(DeviceType::CUDA, nullptr);
    optim::register_kernels(DeviceType::CUDA, nullptr);
  }
};

nn::ModelConfig tiny() {
  nn::ModelConfig c;
  c.vocab_size = 64, c.d_model = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2,
  c.ffn_dim = 48;
  return c;
}

// Three AdamW steps with clipping from the same init; returns the losses and the final weights.
std::pair<std::vector<float>, std::vector<float>> train(nn::BitNetLM& m, Device dev) {
  m.params().to(dev);
  optim::AdamWConfig oc;
  optim::AdamW opt(m.params(), oc);
  std::vector<int32_t> x(2 * 16), y(2 * 16);
  for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t(i * 5 % 64), y[i] = int32_t(i * 11 % 64);
  std::vector<float> losses;
  Tape tape;
  for (int step = 0; step < 3; ++step) {
    m.params().zero_grad();
    {
      TapeScope scope(tape);
      Variable loss = m.loss(x, y, 2, 16);
      losses.push_back(loss.value().item());
      tape.backward(loss);
    }
    optim::clip_grad_norm(m.params(), 0.5);
    EXPECT_TRUE(optim::all_finite(m.params().grads()));
    opt.step(1e-2, 0.1);
  }
  return {losses, m.params().values().to_vector()};
}
}  // namespace

TEST(Dispatch, MixedDevicesAreRefusedNamingBoth) {
  FakeDevice fake;
  Variable a(Tensor::full(Shape{2}, 1.0f)), b(Tensor::full(Shape{2}, 1.0f, Device::cuda(0)));
  EXPECT_EQ(error_of([&] { add(a, b); }),
            "add: operands are on different devices (f32 [2] on cpu, f32 [2] on cuda:0)");
  EXPECT_EQ(error_of([&] { (void)b.value()[0]; }),
            "Tensor::operator[]: tensor is f32 [2] on cuda:0; host access needs a cpu tensor (use "
            ".to(cpu))");
  EXPECT_EQ(b.value().to(Device::cpu()).to_vector(), (std::vector<float>{1.0f, 1.0f}));
}

TEST(Dispatch, UnregisteredDeviceAndMissingKernelNameTheDevice) {
  const std::string e = error_of([] { Tensor::empty(Shape{2}, DType::F32, Device::cuda(0)); });
#ifndef BITNET_CUDA
  EXPECT_EQ(e, "device cuda:0: this build has no backend for it (built without CUDA?)");
#else  // the first CUDA tensor starts the backend: it works on a GPU, or says why it cannot
  if (e != "(no error)") {
    EXPECT_EQ(e.rfind("no CUDA device", 0), 0u) << e;
  }
#endif
  Kernels partial = cpu_kernels();
  partial.rmsnorm = nullptr;
  ScopedKernels swap(DeviceType::CPU, &partial);
  Variable x(Tensor::full(Shape{2, 4}, 1.0f)), g(Tensor::full(Shape{4}, 1.0f));
  EXPECT_EQ(error_of([&] { rmsnorm(x, g, 1e-5f); }),
            "rmsnorm: no kernel on device cpu (its backend does not implement it yet)");
}

// The whole training step (every mode's forward, the tape's backward, clipping, AdamW) on the
// double: bit-identical to the CPU, every tensor a kernel sees is on the double, and no kernel is
// reached through the CPU tables.
TEST(Dispatch, ModelTapeAndOptimizerRunOnASecondDeviceThroughTheTables) {
  for (nn::ActMode mode : {nn::ActMode::FP, nn::ActMode::W158A8, nn::ActMode::A48,
                           nn::ActMode::A48FP4, nn::ActMode::Int4All}) {
    nn::BitNetLM cpu_model(tiny(), 7), dev_model(tiny(), 7);
    cpu_model.set_mode(mode), dev_model.set_mode(mode);
    const auto [cpu_losses, cpu_w] = train(cpu_model, Device::cpu());
    FakeDevice fake;
    g_called.clear(), g_foreign = 0;
    std::pair<std::vector<float>, std::vector<float>> dev;
    {
      Kernels none;
      quant::Kernels qnone;
      optim::Kernels onone;
      ScopedKernels no_cpu(DeviceType::CPU, &none);
      quant::register_kernels(DeviceType::CPU, &qnone);
      optim::register_kernels(DeviceType::CPU, &onone);
      try {
        dev = train(dev_model, Device::cuda(0));
      } catch (const std::exception& e) {
        ADD_FAILURE() << nn::to_string(mode) << ": " << e.what();
      }
      quant::register_kernels(DeviceType::CPU, nullptr);
      optim::register_kernels(DeviceType::CPU, nullptr);
    }
    EXPECT_EQ(dev_model.params().device(), Device::cuda(0));
    EXPECT_EQ(dev.first, cpu_losses) << nn::to_string(mode);
    EXPECT_EQ(dev.second, cpu_w) << nn::to_string(mode);
    EXPECT_EQ(g_foreign, 0) << nn::to_string(mode);
    for (const char* e :
         {"Kernels.gemm", "Kernels.rmsnorm_backward", "Kernels.attention_backward",
          "Kernels.ce_chunk_backward", "Kernels.embedding_backward", "optim::Kernels.adamw",
          "optim::Kernels.grad_norm_clip", "optim::Kernels.count_nonfinite"})
      EXPECT_TRUE(g_called.count(e)) << e << " not reached in " << nn::to_string(mode);
    if (mode == nn::ActMode::A48) {
      for (const char* e : {"quant::Kernels.act_codes", "quant::Kernels.ternary_gemm",
                            "quant::Kernels.pack_ternary", "quant::Kernels.dequantize"})
        EXPECT_TRUE(g_called.count(e)) << e;
    }
  }
}
