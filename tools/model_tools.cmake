# Model tools that need LibTorch (included by tools/CMakeLists.txt when SHARDTUNE_WITH_TORCH).
add_executable(shardtune-generate ${CMAKE_CURRENT_LIST_DIR}/generate.cpp)
target_link_libraries(shardtune-generate PRIVATE shardtune_model shardtune_core CLI11::CLI11)
if(TARGET shardtune_tokenizer)
  target_link_libraries(shardtune-generate PRIVATE shardtune_tokenizer)
  target_compile_definitions(shardtune-generate PRIVATE ST_HAVE_TOKENIZER=1)
endif()

# One training step (forward + backward + AdamW) benchmark; see tools/bench/step.sh.
add_executable(shardtune-step-bench ${CMAKE_CURRENT_LIST_DIR}/bench/step_bench.cpp)
target_link_libraries(shardtune-step-bench PRIVATE shardtune_model shardtune_core CLI11::CLI11)

# shardtune-export: `merge` (a LoRA adapter into its HF base, streamed), `checkpoint` (a trainer checkpoint
# as an HF model / PEFT adapter), `gguf` (GGUF model / LoRA adapter files for llama.cpp).
add_executable(shardtune-export ${CMAKE_CURRENT_LIST_DIR}/export.cpp)
target_link_libraries(shardtune-export PRIVATE shardtune_export shardtune_core CLI11::CLI11)

# shardtune-score: a reward model's rewards for the pairs of a preference folder (--objective reward).
if(TARGET shardtune_train)
  add_executable(shardtune-score ${CMAKE_CURRENT_LIST_DIR}/score.cpp)
  # shardtune_prep_records: prep's parsing and templating for --input (no SentencePiece: see data_prep/prep.cmake).
  target_link_libraries(shardtune-score PRIVATE shardtune_train shardtune_model shardtune_data shardtune_prep_records
                        shardtune_hf_tokenizer shardtune_tokenizer shardtune_core CLI11::CLI11)
endif()
