// Data-parallel training across processes. Under `mpirun -np K`, every rank holds the whole
// model, runs its share of each batch, and the gradients, losses and expert counts are summed
// over all ranks before the update, so every rank applies the same update and the parameters
// stay equal without being sent. Without MPI (or outside mpirun) there is one rank and every
// call is a no-op.
//
// Tensor and expert parallelism can follow behind the same interface: they need more
// collectives (all-to-all for expert dispatch), not a different trainer loop.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace whale::train {

class Communicator {
 public:
  // The process's communicator: MPI's world when started by mpirun (MPI is initialised on
  // first use and finalised at exit), else a single rank.
  static Communicator& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  // In-place sums over all ranks.
  void sum(std::span<float> values) const;
  void sum(std::span<double> values) const;
  void sum(std::span<int64_t> values) const;
  // Copies rank 0's values to every rank.
  void broadcast(std::span<float> values) const;
  void barrier() const;
  // "MPI (OpenMPI 4.1.4), 2 ranks" or "single process".
  std::string describe() const;

 private:
  Communicator();
  int rank_ = 0;
  int size_ = 1;
  bool mpi_ = false;
};

}  // namespace whale::train
