// The checkpoint interval for `--every auto`: Daly's higher-order estimate of the optimum
// (J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
// Future Generation Computer Systems 22, 2006):
//
//   for delta < 2M:  tau = sqrt(2 delta M) * [1 + 1/3 sqrt(delta / 2M) + 1/9 (delta / 2M)] - delta
//   otherwise:       tau = M
//
// delta is the cost of one checkpoint and M the mean time between failures, in any one unit;
// tau (same unit) is the compute time between the end of one checkpoint and the start of the
// next. Young's first-order sqrt(2 delta M) is the leading term.
#pragma once

namespace crest::agent {

double daly_interval(double delta, double mtbf);

}  // namespace crest::agent
