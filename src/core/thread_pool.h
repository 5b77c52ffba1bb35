// A fixed pool of worker threads; the calling thread works too.
//
// Decode calls parallel_for several hundred times per token, each for a few microseconds of
// work, so handing out a job must cost far less than a futex round trip: idle workers spin on
// an atomic for a short while before they sleep, and the caller spins for their answer.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
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

 private:
  void worker_loop(int index);
  void run_chunk(int index);

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
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

// Number of cores this process may run on (sched affinity), at least 1.
int available_cores();

}  // namespace whale
