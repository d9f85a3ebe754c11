// A prompt template's chat turns as a Hugging Face chat template (Jinja, tokenizer_config.json's
// "chat_template"), so apply_chat_template renders a conversation as prep rendered it for training.
#pragma once

#include <string>

#include "template.h"

namespace shardtune::prep {

// The Jinja text, or "" when the template has no chat turns for an assistant. `bos`: start with bos_token
// (the tokenizer prepends BOS to each sample); `eos`: end with eos_token (append_eos and the tokenizer has
// an EOS). With add_generation_prompt, the assistant's prompt pattern ends the text instead of EOS.
std::string hf_chat_template(const PromptTemplate& tpl, bool bos, bool eos);

}  // namespace shardtune::prep
