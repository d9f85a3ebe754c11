// Stop signals (SIGTERM, SIGINT, SIGUSR1) for long runs: the handler says at once what happened and
// at which step (async-signal-safe write), and records the signal for the program to stop on between
// steps. A second signal of the same kind ends the process the default way.
#pragma once

#include <cstdint>

namespace shardtune::signals {

// `program` and `note` are copied; the line written is
// "<program>[ [rank r]]: received SIGTERM at step N of M; stopping; <note>".
void install_stop_handlers(const char* program, int rank, int world, const char* note);
void set_progress(int64_t step, int64_t total);  // the step now running (1-based) and the total
int received();                                  // 0, or the first stop signal received
const char* name(int signo);                     // "SIGTERM", ...
// The program is ending on an error it has reported: stop signals take their default action again
// (MPI_Abort makes the launcher SIGTERM every rank; that must not read as a user's signal).
void quiet();

}  // namespace shardtune::signals
