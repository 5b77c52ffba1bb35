#include "train/distributed.h"

#include <cstdlib>

#ifdef WHALE_WITH_MPI
#include <mpi.h>
#endif

namespace whale::train {

#ifdef WHALE_WITH_MPI
namespace {

// mpirun (OpenMPI, MPICH, Slurm's PMI) announces the job in the environment; a plain run does
// not, and then MPI is never initialised.
bool started_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

}  // namespace
#endif

Communicator::Communicator() {
#ifdef WHALE_WITH_MPI
  if (!started_by_mpirun()) return;
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    std::atexit([] {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised) MPI_Finalize();
    });
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  mpi_ = true;
#endif
}

Communicator& Communicator::world() {
  static Communicator c;
  return c;
}

#ifdef WHALE_WITH_MPI
void Communicator::sum(std::span<float> v) const {
  if (mpi_ && size_ > 1) {
    MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
}
void Communicator::sum(std::span<double> v) const {
  if (mpi_ && size_ > 1) {
    MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
}
void Communicator::sum(std::span<int64_t> v) const {
  if (mpi_ && size_ > 1) {
    MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  }
}
void Communicator::broadcast(std::span<float> v) const {
  if (mpi_ && size_ > 1) MPI_Bcast(v.data(), int(v.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
}
void Communicator::barrier() const {
  if (mpi_ && size_ > 1) MPI_Barrier(MPI_COMM_WORLD);
}
std::string Communicator::describe() const {
  if (!mpi_) return "single process";
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, size_t(len));
  v = v.substr(0, v.find_first_of(",\n"));
  return "MPI (" + v + "), " + std::to_string(size_) + " ranks";
}
#else
void Communicator::sum(std::span<float>) const {}
void Communicator::sum(std::span<double>) const {}
void Communicator::sum(std::span<int64_t>) const {}
void Communicator::broadcast(std::span<float>) const {}
void Communicator::barrier() const {}
std::string Communicator::describe() const { return "single process (built without MPI)"; }
#endif

}  // namespace whale::train
