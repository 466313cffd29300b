// MPI implementation of trainers::Comm (OpenMPI): in-place collectives on MPI_COMM_WORLD.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "trainers/comm.h"

namespace trainers {
namespace {

class Timer {
 public:
  explicit Timer(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~Timer() { acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  double& acc_;
  std::chrono::steady_clock::time_point t0_;
};

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string("MPI ") + what + " failed: " + std::string(msg, size_t(len)));
}

// MPI counts are int: large buffers are processed in chunks of at most 2^30 elements.
constexpr int64_t kChunk = int64_t(1) << 30;

class MpiComm final : public Comm {
 public:
  MpiComm(int* argc, char*** argv) {
    int provided = 0;
    check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
  }
  ~MpiComm() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  void allreduce_sum(float* d, int64_t n) override {
    Timer t(comm_s_);
    for (int64_t o = 0; o < n; o += kChunk)
      check(MPI_Allreduce(MPI_IN_PLACE, d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
  }
  int start_allreduce_sum(float* d, int64_t n) override {
    Timer t(comm_s_);
    for (int64_t o = 0; o < n; o += kChunk) {
      reqs_.emplace_back();
      check(MPI_Iallreduce(MPI_IN_PLACE, d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                           &reqs_.back()),
            "MPI_Iallreduce");
    }
    return int(reqs_.size()) - 1;
  }
  void wait_all() override {
    Timer t(comm_s_);
    if (!reqs_.empty()) check(MPI_Waitall(int(reqs_.size()), reqs_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    reqs_.clear();
  }
  void broadcast(float* d, int64_t n, int root) override {
    Timer t(comm_s_);
    for (int64_t o = 0; o < n; o += kChunk)
      check(MPI_Bcast(d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  void broadcast_u64(uint64_t* d, int64_t n, int root) override {
    Timer t(comm_s_);
    check(MPI_Bcast(d, int(n), MPI_UINT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  std::vector<uint64_t> allgather_u64(uint64_t v) override {
    Timer t(comm_s_);
    std::vector<uint64_t> out(static_cast<size_t>(world_));
    check(MPI_Allgather(&v, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
    return out;
  }
  double allreduce_sum_f64(double v) override {
    Timer t(comm_s_);
    check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return v;
  }
  void progress() override {
    int done = 0;
    if (!reqs_.empty()) MPI_Testall(int(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
    if (done) reqs_.clear();
  }
  void barrier() override {
    Timer t(comm_s_);
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }
  [[noreturn]] void abort(const std::string& why) override {
    std::fprintf(stderr, "rank %d: %s\n", rank_, why.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::abort();  // MPI_Abort does not return
  }

 private:
  int rank_ = 0, world_ = 1;
  std::vector<MPI_Request> reqs_;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm(int* argc, char*** argv) { return std::make_unique<MpiComm>(argc, argv); }

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

void LocalComm::abort(const std::string& why) { throw std::runtime_error(why); }

}  // namespace trainers
