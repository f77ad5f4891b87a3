// crest-bench-job: the job the engine benchmarks checkpoint (see bench_job.h).
#include "bench/bench_job.h"

int main(int argc, char** argv) { crest::bench::job_main(argc, argv); }
