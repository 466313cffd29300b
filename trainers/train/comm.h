// Process-group interface the trainer talks to: single-process (LocalComm) or MPI (MpiComm).
//
// All collectives are over fp32 buffers in place. Non-blocking all-reduces return a handle that
// wait() completes; the trainer issues one per gradient bucket as soon as the backward pass has
// finished it, so communication overlaps the rest of the backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace trainers::train {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual void allreduce_sum(float* data, int64_t n) = 0;  // blocking, in place
  // Starts a non-blocking in-place sum; returns a request id for wait().
  virtual int start_allreduce_sum(float* data, int64_t n) = 0;
  virtual void wait_all() = 0;  // completes every started request
  virtual void broadcast(float* data, int64_t n, int root) = 0;
  virtual void broadcast_u64(uint64_t* data, int64_t n, int root) = 0;
  // Gathers one value per rank (result has world() entries, on every rank).
  virtual std::vector<uint64_t> allgather_u64(uint64_t v) = 0;
  virtual double allreduce_sum_f64(double v) = 0;
  virtual void allreduce_sum_f64(double* data, int64_t n) = 0;  // blocking, in place
  // ZeRO-1 collectives over a buffer split into consecutive per-rank pieces of counts[r] elements
  // (counts has world() entries; rank r's piece starts at the sum of counts[0..r)).
  // start_reduce_scatter_sum: mine = sum over ranks of their `send` piece of this rank (send is the
  // whole buffer); non-blocking, completed by wait_all() (send and mine must stay untouched until).
  // allgather: every rank's piece of `data` (in place) is copied to all ranks.
  // gather: root receives every piece into `all` (whole buffer, root only); scatter: the reverse.
  virtual void start_reduce_scatter_sum(const float* send, float* mine,
                                        const std::vector<int64_t>& counts) = 0;
  virtual void allgather(float* data, const std::vector<int64_t>& counts) = 0;
  virtual void gather(const float* mine, float* all, const std::vector<int64_t>& counts,
                      int root) = 0;
  virtual void scatter(const float* all, float* mine, const std::vector<int64_t>& counts,
                       int root) = 0;
  // Lets started non-blocking operations progress (MPI progresses them only inside MPI calls).
  virtual void progress() {}
  virtual void barrier() = 0;
  [[noreturn]] virtual void abort(const std::string& why) = 0;  // ends every rank
  double comm_seconds() const { return comm_s_; }               // time spent inside collectives

 protected:
  double comm_s_ = 0;
};

class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  void allreduce_sum(float*, int64_t) override {}
  int start_allreduce_sum(float*, int64_t) override { return 0; }
  void wait_all() override {}
  void broadcast(float*, int64_t, int) override {}
  void broadcast_u64(uint64_t*, int64_t, int) override {}
  std::vector<uint64_t> allgather_u64(uint64_t v) override { return {v}; }
  double allreduce_sum_f64(double v) override { return v; }
  void allreduce_sum_f64(double*, int64_t) override {}
  void start_reduce_scatter_sum(const float* send, float* mine,
                                const std::vector<int64_t>& counts) override;
  void allgather(float*, const std::vector<int64_t>&) override {}
  void gather(const float* mine, float* all, const std::vector<int64_t>& counts, int root) override;
  void scatter(const float* all, float* mine, const std::vector<int64_t>& counts,
               int root) override;
  void barrier() override {}
  [[noreturn]] void abort(const std::string& why) override;
};

// MPI communicator (MPI_COMM_WORLD). Initialises MPI on construction (MPI_THREAD_FUNNELED) and
// finalises on destruction. Only trainers/train/comm_mpi.cpp includes <mpi.h>.
std::unique_ptr<Comm> make_mpi_comm(int* argc, char*** argv);
// True when the process was started by an MPI launcher (OMPI_COMM_WORLD_SIZE / PMI_SIZE set).
bool launched_by_mpi();

}  // namespace trainers::train
