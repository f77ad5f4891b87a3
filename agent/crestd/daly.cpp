#include "agent/crestd/daly.h"

#include <cmath>

namespace crest::agent {

double daly_interval(double delta, double mtbf) {
  if (!(mtbf > 0)) return 0;
  if (!(delta > 0)) delta = 0;
  if (delta >= 2 * mtbf) return mtbf;
  double x = delta / (2 * mtbf);
  return std::sqrt(2 * delta * mtbf) * (1 + std::sqrt(x) / 3 + x / 9) - delta;
}

}  // namespace crest::agent
