# The libFuzzer targets for the code that reads untrusted bytes: the config
# load/print round trip, the GGUF header reader and the Ollama answer parser.
#
# Never part of the default build (which uses gcc): tests/fuzz/run includes
# this file into the root project with clang, so the targets link the very
# core library the binary links, however the root builds it:
#   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang \
#         -DCMAKE_PROJECT_INCLUDE=$PWD/tests/fuzz/fuzz.cmake
#   cmake --build build-fuzz -j2 --target fuzz_config fuzz_gguf fuzz_ollama
# CMake runs it right after the root's project(), before the root defines
# its targets; names such as cmcore resolve when the build is generated.
include_guard(GLOBAL)

if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "the fuzz targets need clang (-DCMAKE_C_COMPILER=clang)")
endif()

# Everything (the core library included) under ASan and UBSan, with
# libFuzzer's coverage feedback; the test suites are not needed.
set(CM_SANITIZE ON CACHE BOOL "" FORCE)
set(CM_TESTS OFF CACHE BOOL "" FORCE)
add_compile_options(-fsanitize=fuzzer-no-link)

set(CM_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
set(CM_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                  -fno-omit-frame-pointer)
foreach(target fuzz_config fuzz_gguf fuzz_ollama)
    add_executable(${target} ${CM_FUZZ_DIR}/${target}.c)
    target_compile_options(${target} PRIVATE -Wall -Wextra -Werror ${CM_FUZZ_FLAGS})
    target_compile_definitions(${target} PRIVATE _GNU_SOURCE)
    target_link_libraries(${target} PRIVATE cmcore)
    target_link_options(${target} PRIVATE ${CM_FUZZ_FLAGS} -fsanitize=fuzzer)
endforeach()

# Regenerates the extra GGUF seeds of corpus/gguf/ (not run by the fuzz run).
add_executable(make_gguf_seeds ${CM_FUZZ_DIR}/make_gguf_seeds.c)
target_include_directories(make_gguf_seeds PRIVATE ${CMAKE_SOURCE_DIR}/fixtures)
target_compile_options(make_gguf_seeds PRIVATE -Wall -Wextra -Werror ${CM_FUZZ_FLAGS})
target_link_options(make_gguf_seeds PRIVATE ${CM_FUZZ_FLAGS})
