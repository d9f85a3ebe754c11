# shardtune-prep: JSONL -> HDF5 shards. Links libsentencepiece (via shardtune_prep_tokenizers), never LibTorch.
set(_tpl_header ${CMAKE_CURRENT_BINARY_DIR}/generated/builtin_templates.h)
file(GLOB _tpl_files ${PROJECT_SOURCE_DIR}/configs/templates/*.json)
add_custom_command(
  OUTPUT ${_tpl_header}
  COMMAND ${CMAKE_COMMAND} -DOUT=${_tpl_header} -DSRC_DIR=${PROJECT_SOURCE_DIR}/configs/templates
          -P ${CMAKE_CURRENT_SOURCE_DIR}/embed_templates.cmake
  DEPENDS ${_tpl_files} ${CMAKE_CURRENT_SOURCE_DIR}/embed_templates.cmake
  COMMENT "Embedding prompt templates")

# shardtune_prep_records: lines -> records -> token sequences (templates, pairs), on the Tokenizer interface
# only: no SentencePiece and no LibTorch, so shardtune-score (a LibTorch process) tokenizes as prep does.
add_library(shardtune_prep_records STATIC template.cpp chat_template.cpp record.cpp preference.cpp score_input.cpp
            ${_tpl_header})
target_include_directories(shardtune_prep_records PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}
                           PRIVATE ${CMAKE_CURRENT_BINARY_DIR}/generated)
target_link_libraries(shardtune_prep_records PUBLIC shardtune_tokenizer shardtune_core simdjson::simdjson
                      nlohmann_json::nlohmann_json)

add_library(shardtune_prep STATIC inputs.cpp prep.cpp)
target_include_directories(shardtune_prep PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_definitions(shardtune_prep PRIVATE SHARDTUNE_VERSION="${PROJECT_VERSION}")
target_link_libraries(shardtune_prep PUBLIC shardtune_prep_records shardtune_prep_tokenizers shardtune_data
                      shardtune_dist_mpi shardtune_core simdjson::simdjson nlohmann_json::nlohmann_json)

add_executable(shardtune-prep prep_main.cpp)
target_link_libraries(shardtune-prep PRIVATE shardtune_prep CLI11::CLI11)
