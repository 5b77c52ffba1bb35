# Test fixture: a small random DeepSeek-V3 model with the real V3 tokenizer (vocab 129280), for
# tests of text generation. Usage: cmake -DWHALE=... -DSRC=... -DOUT=... -P make_text_model.cmake
file(REMOVE_RECURSE "${OUT}")
file(READ "${SRC}/tests/fixtures/v3_yarn/config.json" config)
string(JSON config SET "${config}" vocab_size 129280)
string(JSON config SET "${config}" num_nextn_predict_layers 0)
string(JSON config SET "${config}" max_position_embeddings 1000000)
file(WRITE "${OUT}.config.json" "${config}")
execute_process(COMMAND "${WHALE}" synth "${OUT}.config.json" "${OUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "whale synth failed")
endif()
file(COPY "${SRC}/models/deepseek-v3-tokenizer/tokenizer.json"
          "${SRC}/models/deepseek-v3-tokenizer/tokenizer_config.json" DESTINATION "${OUT}")
