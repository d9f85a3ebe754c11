// shardtune-inspect on GGUF files (tools/inspect_gguf.cpp): torch-free, through shardtune_gguf's read_info.
#pragma once

#include <filesystem>

namespace shardtune::inspect {

// A file with the "GGUF" magic (or, if unreadable, a .gguf name, so that its error is the GGUF one)?
bool is_gguf_path(const std::filesystem::path& p);

// Prints the header (version, alignment), every metadata key (arrays abbreviated: element type, length and
// the first items) and the tensor table (name, type, ggml dims, absolute offset, bytes). read_info has
// checked every offset and size against the file; a bad file is an Error (non-zero exit).
int inspect_gguf(const std::filesystem::path& p);

}  // namespace shardtune::inspect
