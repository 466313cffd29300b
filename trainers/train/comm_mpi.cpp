// MPI implementation of trainers::train::Comm (OpenMPI): in-place collectives on MPI_COMM_WORLD.
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <stdexcept>

#include "trainers/train/comm.h"

namespace trainers::train {
namespace {

class Timer {
 public:
  explicit Timer(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  double& acc_;
  std::chrono::steady_clock::time_point t0_;
};

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string("MPI ") + what +
                           " failed: " + std::string(msg, size_t(len)));
}

// MPI counts are int: large buffers are processed in chunks of at most 2^30 elements.
constexpr int64_t kChunk = int64_t(1) << 30;

// Per-rank counts and displacements as MPI ints; a piece beyond INT_MAX elements is an error.
struct Pieces {
  std::vector<int> counts, displs;
  Pieces(const std::vector<int64_t>& c, int world, const char* what) {
    if (int64_t(c.size()) != world)
      throw std::runtime_error(std::string(what) + ": " + std::to_string(c.size()) +
                               " counts for " + std::to_string(world) + " ranks");
    int64_t off = 0;
    for (size_t r = 0; r < c.size(); ++r) {
      if (c[r] > INT_MAX || off > INT_MAX)
        throw std::runtime_error(std::string(what) + ": rank " + std::to_string(r) + "'s piece (" +
                                 std::to_string(c[r]) + " elements at offset " +
                                 std::to_string(off) +
                                 ") exceeds MPI's int counts; use more ranks");
      counts.push_back(int(c[r]));
      displs.push_back(int(off));
      off += c[r];
    }
  }
};

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
      check(MPI_Allreduce(MPI_IN_PLACE, d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, MPI_SUM,
                          MPI_COMM_WORLD),
            "MPI_Allreduce");
  }
  int start_allreduce_sum(float* d, int64_t n) override {
    Timer t(comm_s_);
    for (int64_t o = 0; o < n; o += kChunk) {
      reqs_.emplace_back();
      check(MPI_Iallreduce(MPI_IN_PLACE, d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD, &reqs_.back()),
            "MPI_Iallreduce");
    }
    return int(reqs_.size()) - 1;
  }
  void wait_all() override {
    Timer t(comm_s_);
    if (!reqs_.empty())
      check(MPI_Waitall(int(reqs_.size()), reqs_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    reqs_.clear();
    pending_.clear();
  }
  void broadcast(float* d, int64_t n, int root) override {
    Timer t(comm_s_);
    for (int64_t o = 0; o < n; o += kChunk)
      check(MPI_Bcast(d + o, int(std::min(kChunk, n - o)), MPI_FLOAT, root, MPI_COMM_WORLD),
            "MPI_Bcast");
  }
  void broadcast_u64(uint64_t* d, int64_t n, int root) override {
    Timer t(comm_s_);
    check(MPI_Bcast(d, int(n), MPI_UINT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  std::vector<uint64_t> allgather_u64(uint64_t v) override {
    Timer t(comm_s_);
    std::vector<uint64_t> out(static_cast<size_t>(world_));
    check(MPI_Allgather(&v, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD),
          "MPI_Allgather");
    return out;
  }
  double allreduce_sum_f64(double v) override {
    Timer t(comm_s_);
    check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return v;
  }
  void allreduce_sum_f64(double* d, int64_t n) override {
    Timer t(comm_s_);
    check(MPI_Allreduce(MPI_IN_PLACE, d, int(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
  void start_reduce_scatter_sum(const float* send, float* mine,
                                const std::vector<int64_t>& c) override {
    Timer t(comm_s_);
    pending_.emplace_back(c, world_,
                          "MPI_Ireduce_scatter");  // the counts must live until completion
    reqs_.emplace_back();
    check(MPI_Ireduce_scatter(send, mine, pending_.back().counts.data(), MPI_FLOAT, MPI_SUM,
                              MPI_COMM_WORLD, &reqs_.back()),
          "MPI_Ireduce_scatter");
  }
  void allgather(float* d, const std::vector<int64_t>& c) override {
    Timer t(comm_s_);
    const Pieces p(c, world_, "MPI_Allgatherv");
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d, p.counts.data(), p.displs.data(),
                         MPI_FLOAT, MPI_COMM_WORLD),
          "MPI_Allgatherv");
  }
  void gather(const float* mine, float* all, const std::vector<int64_t>& c, int root) override {
    Timer t(comm_s_);
    const Pieces p(c, world_, "MPI_Gatherv");
    check(MPI_Gatherv(mine, p.counts[size_t(rank_)], MPI_FLOAT, all, p.counts.data(),
                      p.displs.data(), MPI_FLOAT, root, MPI_COMM_WORLD),
          "MPI_Gatherv");
  }
  void scatter(const float* all, float* mine, const std::vector<int64_t>& c, int root) override {
    Timer t(comm_s_);
    const Pieces p(c, world_, "MPI_Scatterv");
    check(MPI_Scatterv(all, p.counts.data(), p.displs.data(), MPI_FLOAT, mine,
                       p.counts[size_t(rank_)], MPI_FLOAT, root, MPI_COMM_WORLD),
          "MPI_Scatterv");
  }
  void progress() override {
    if (reqs_.empty()) return;
    Timer t(comm_s_);
    int done = 0;
    MPI_Testall(int(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
    if (done) reqs_.clear(), pending_.clear();
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
  std::deque<Pieces>
      pending_;  // counts of started reduce-scatters (MPI reads them until completion)
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm(int* argc, char*** argv) {
  return std::make_unique<MpiComm>(argc, argv);
}

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

void LocalComm::abort(const std::string& why) { throw std::runtime_error(why); }
void LocalComm::start_reduce_scatter_sum(const float* send, float* mine,
                                         const std::vector<int64_t>& counts) {
  if (send != mine) std::memmove(mine, send, size_t(counts.at(0)) * sizeof(float));
}
void LocalComm::gather(const float* mine, float* all, const std::vector<int64_t>& counts, int) {
  if (mine != all) std::memmove(all, mine, size_t(counts.at(0)) * sizeof(float));
}
void LocalComm::scatter(const float* all, float* mine, const std::vector<int64_t>& counts, int) {
  if (mine != all) std::memmove(mine, all, size_t(counts.at(0)) * sizeof(float));
}

}  // namespace trainers::train
