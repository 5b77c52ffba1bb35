#include "train/blas.h"

namespace whale::train {

void use_single_threaded_blas() { openblas_set_num_threads(1); }

}  // namespace whale::train
