// A fixed pool of worker threads; the calling thread works too.
//
// Decode calls parallel_for several hundred times per token, each for a few microseconds of
// work, so handing out a job must cost far less than a futex round trip: idle workers spin on
// an atomic for a short while before they sleep, and the caller spins for their answer.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/function_ref.h"

namespace whale {

class ThreadPool {
 public:
  // n_threads <= 0 uses every core the process may run on. If the system refuses to start as
  // many threads, the pool runs with fewer (see size()).
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into contiguous chunks of at least `grain` items, runs fn(begin, end) on each,
  // and blocks until all are done. An exception thrown by fn is rethrown here once every chunk
  // has finished. Not reentrant: fn must not call parallel_for. One caller at a time.
  void parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t)> fn, int64_t grain = 1);

  // Runs fn(begin, end) on ranges that cover [0, n) once, mostly one item per call: each
  // thread walks its own contiguous share from the front, and a thread that has finished takes
  // items from the back of the others'. For jobs whose threads are slowed unevenly (by each
  // other's memory traffic, by the host): no thread waits while another still has a share
  // left, and each thread's reads stay one forward stream until then. Same error handling as
  // parallel_for.
  void parallel_for_balanced(int64_t n, FunctionRef<void(int64_t, int64_t)> fn);

 private:
  void worker_loop(int index);
  void run_chunk(int index);
  void run_balanced(int index);
  void run_job();
  void record_error();

  int n_threads_;
  int worker_spins_ = 0;  // pauses before a worker sleeps, or the caller waits on a futex
  int caller_spins_ = 0;
  std::vector<std::thread> workers_;
  // Bumped once per job (and once at shutdown); workers wait for it to change.
  std::atomic<uint64_t> generation_{0};
  // Workers that have not finished the current job.
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The current job, written before generation_ is bumped.
  const FunctionRef<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;
  bool job_balanced_ = false;
  // Per thread, for balanced jobs: the items [front, back) not yet taken, packed as
  // front | back << 32. Each on its own cache line: the owner takes from it at every item.
  struct alignas(64) Share {
    std::atomic<uint64_t> span{0};
  };
  std::unique_ptr<Share[]> shares_;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

// Number of cores this process may run on (sched affinity), at least 1.
int available_cores();

}  // namespace whale
