# cmake -DNM=nm -DLIB=libmorphkv.a -P check_core_symbols.cmake
# Fails when a C object of the core library references a function that prints to a stream, ends
# the process or spawns one. snprintf/vsnprintf (formatting into a buffer) are fine; so is opening
# and reading files (the model, the tokenizer's data).
execute_process(COMMAND ${NM} -u -A ${LIB} OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE nm_err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -u -A ${LIB} failed: ${nm_err}")
endif()
set(banned printf fprintf vprintf vfprintf puts fputs putchar fputc putc perror fwrite
    __printf_chk __fprintf_chk __vfprintf_chk __vprintf_chk
    exit _exit _Exit abort quick_exit MPI_Abort __assert_fail
    system popen fork vfork execv execve execvp execl execlp posix_spawn posix_spawnp)
string(REPLACE "\n" ";" lines "${out}")
set(bad "")
set(n_c 0)
foreach(line ${lines})
  # "libmorphkv.a:engine.c.o:                 U snprintf"
  if(NOT line MATCHES "^[^:]*:([^:]+\\.c\\.o): +U ([A-Za-z0-9_@.]+)")
    continue()
  endif()
  set(obj ${CMAKE_MATCH_1})
  string(REGEX REPLACE "@.*" "" sym "${CMAKE_MATCH_2}")
  math(EXPR n_c "${n_c} + 1")
  list(FIND banned "${sym}" i)
  if(NOT i EQUAL -1)
    list(APPEND bad "${obj}: ${sym}")
  endif()
endforeach()
if(n_c EQUAL 0)
  message(FATAL_ERROR "no undefined symbols of C objects found in ${LIB} (nm output not understood)")
endif()
if(bad)
  string(REPLACE ";" "\n  " bad "${bad}")
  message(FATAL_ERROR "the core library prints, exits or spawns:\n  ${bad}")
endif()
message(STATUS "core library: ${n_c} undefined references of C objects checked, none prints, exits or spawns")
