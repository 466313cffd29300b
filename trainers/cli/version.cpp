// `bitnet version`: the version and the GEMM routes this build takes.
#include <cstdio>

#include "autograd/kernels.h"
#include "quant/igemm.h"
#include "trainers/cli/command.h"

namespace trainers::cli {

Command add_version(CLI::App& app) {
  return {app.add_subcommand("version", "print the version"), [] {
            std::printf("bitnet 0.1.0 (fp32 GEMM: %s, kernels %s; int8 GEMM: %s)\n",
                        autograd::kernels::gemm_backend(), autograd::kernels::gemm_core(),
                        quant::igemm_kernel());
            return 0;
          }};
}

}  // namespace trainers::cli
