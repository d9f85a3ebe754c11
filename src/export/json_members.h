// Edits of a JSON object's top-level members in its text, every other byte left as it was: a config we
// only add a key to stays the file its authors wrote (parsing and dumping would, for one, turn HF's
// integer model_max_length 1000000000000000019884624838656 into the float 1e+30).
#pragma once

#include <string>

namespace shardtune::exporter {

// `text` with member `key` set to `value_json` (a JSON value's text): replaced where it is, else appended
// as the last member, indented like the first. `text` must hold a valid JSON object (parse it first).
std::string set_json_member(const std::string& text, const std::string& key, const std::string& value_json);

}  // namespace shardtune::exporter
