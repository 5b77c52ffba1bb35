#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <system_error>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace whale {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until pred() holds or about `spins` pauses have passed (tens of microseconds to a
// millisecond, depending on the core); returns pred().
template <class Pred>
bool spin_until(Pred pred, int spins) {
  for (int i = 0; i < spins; ++i) {
    if (pred()) return true;
    cpu_relax();
  }
  return pred();
}

// Long enough to bridge the gaps between the ops of one forward pass, short enough that an
// idle server does not keep a core busy. With more threads than cores, spinning would take
// the cores from the threads doing the work: then they barely spin at all.
constexpr int kWorkerSpins = 1 << 15;
constexpr int kCallerSpins = 1 << 20;
constexpr int kOversubscribedSpins = 64;

}  // namespace

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads > 0 ? n_threads : available_cores()) {
  shares_ = std::make_unique<Share[]>(static_cast<size_t>(n_threads_));
  const bool oversubscribed = n_threads_ > available_cores();
  worker_spins_ = oversubscribed ? kOversubscribedSpins : kWorkerSpins;
  caller_spins_ = oversubscribed ? kOversubscribedSpins : kCallerSpins;
  for (int i = 1; i < n_threads_; ++i) {
    try {
      workers_.emplace_back([this, i] { worker_loop(i); });
    } catch (const std::system_error&) {
      n_threads_ = i;  // the system refused more threads: run with those we have
      break;
    }
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::record_error() {
  // Kept for the caller; the other chunks still run to the end so that no worker touches the
  // job after parallel_for returns.
  std::lock_guard lock(error_mutex_);
  if (!error_) error_ = std::current_exception();
}

void ThreadPool::run_chunk(int index) {
  if (job_balanced_) {
    run_balanced(index);
    return;
  }
  if (index >= job_chunks_) return;
  const int64_t begin = job_n_ * index / job_chunks_;
  const int64_t end = job_n_ * (index + 1) / job_chunks_;
  if (begin >= end) return;
  try {
    (*job_)(begin, end);
  } catch (...) {
    record_error();
  }
}

namespace {

// Takes the first (from_back false) or last item of a share; -1 once it is empty.
int64_t take(std::atomic<uint64_t>& span, bool from_back) {
  uint64_t s = span.load(std::memory_order_relaxed);
  for (;;) {
    const uint64_t front = s & 0xFFFFFFFFu, back = s >> 32;
    if (front >= back) return -1;
    const uint64_t next = from_back ? front | (back - 1) << 32 : (front + 1) | back << 32;
    if (span.compare_exchange_weak(s, next, std::memory_order_relaxed))
      return static_cast<int64_t>(from_back ? back - 1 : front);
  }
}

}  // namespace

void ThreadPool::run_balanced(int index) {
  auto run = [&](int64_t i) {
    try {
      (*job_)(i, i + 1);
    } catch (...) {
      record_error();
    }
  };
  for (int64_t i = take(shares_[index].span, false); i >= 0; i = take(shares_[index].span, false))
    run(i);
  for (int k = 1; k < n_threads_; ++k) {
    std::atomic<uint64_t>& other = shares_[(index + k) % n_threads_].span;
    for (int64_t i = take(other, true); i >= 0; i = take(other, true)) run(i);
  }
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; },
                    worker_spins_)) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;  // woken, perhaps spuriously: look again
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    run_chunk(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t)> fn, int64_t grain) {
  if (n <= 0) return;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int chunks = static_cast<int>(std::min<int64_t>(n_threads_, max_chunks));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  // No exception path before the workers start: they must all report back.
  job_ = &fn;
  job_n_ = n;
  job_chunks_ = chunks;
  job_balanced_ = false;
  run_job();
}

void ThreadPool::parallel_for_balanced(int64_t n, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1 || n > int64_t{0xFFFFFFFF}) {
    parallel_for(n, fn);  // nothing to balance, or too many items to pack
    return;
  }
  for (int k = 0; k < n_threads_; ++k) {
    const auto front = static_cast<uint64_t>(n * k / n_threads_);
    const auto back = static_cast<uint64_t>(n * (k + 1) / n_threads_);
    shares_[k].span.store(front | back << 32, std::memory_order_relaxed);
  }
  job_ = &fn;
  job_n_ = n;
  job_chunks_ = n_threads_;
  job_balanced_ = true;
  run_job();
}

void ThreadPool::run_job() {
  // The release increment of generation_ publishes the job (and the shares) to the workers.
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  run_chunk(0);
  if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; }, caller_spins_)) {
    for (int left = pending_.load(std::memory_order_acquire); left != 0;
         left = pending_.load(std::memory_order_acquire)) {
      pending_.wait(left, std::memory_order_acquire);
    }
  }
  job_ = nullptr;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace whale
