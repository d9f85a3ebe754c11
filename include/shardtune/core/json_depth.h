// A bound on JSON nesting, checked by a linear pre-scan before any JSON library sees the text: parsed
// JSON values are copied and destroyed recursively, so an input nested 300,000 deep would overflow the
// stack. Every JSON a user hands us (config.json, manifest.json, safetensors headers, tokenizer.json)
// goes through this first.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace shardtune {

// Real model configs, manifests and tokenizer files nest fewer than 10 levels.
inline constexpr size_t kMaxJsonDepth = 128;

// Throws Error "<source>: JSON nested deeper than N levels (at byte B)" when `text` opens more than
// `max_depth` arrays/objects at once (brackets inside strings do not count). Does not validate syntax.
void check_json_depth(std::string_view text, const std::string& source, size_t max_depth = kMaxJsonDepth);

}  // namespace shardtune
