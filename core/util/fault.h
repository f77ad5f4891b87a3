#pragma once

namespace crest {

// A named point where crest, for a test, dies at once: with CREST_FAULT_KILL=NAME in its
// environment, crest SIGKILLs itself on reaching fault_point("NAME"). Tests use it to prove
// that crest dying exactly there leaves the job as it was (the windows a kill at a random
// moment rarely hits). Without the variable it costs one comparison.
void fault_point(const char* name);

}  // namespace crest
