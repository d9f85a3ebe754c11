# Prep-side tokenizers: shardtune_prep_tokenizers adds SentencePiece `.model` support on top of
# shardtune_tokenizer (never link it into anything that links LibTorch), and the shardtune-tokenize CLI.
add_library(shardtune_prep_tokenizers STATIC ${CMAKE_CURRENT_LIST_DIR}/sentencepiece_tokenizer.cpp)
target_include_directories(shardtune_prep_tokenizers PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(shardtune_prep_tokenizers PUBLIC shardtune_tokenizer shardtune_core PRIVATE PkgConfig::SENTENCEPIECE)

add_executable(shardtune-tokenize ${CMAKE_CURRENT_LIST_DIR}/tokenize_main.cpp)
target_link_libraries(shardtune-tokenize PRIVATE shardtune_prep_tokenizers shardtune_core CLI11::CLI11)
