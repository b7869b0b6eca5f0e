// effattn_golden: checks the library's ops against the golden vectors in tests/data/golden.
//
//   effattn_golden <golden_dir> [name_filter]
//
// Prints one PASS / FAIL / SKIP line per case (format: run_golden_case in golden.hpp) and ends
// with "N passed, M failed, K skipped". Exits non-zero on any failure or when no case is found.
// Handlers live in golden_<family>.cpp and register themselves (see golden.hpp).
#include <iostream>
#include <string>

#include "golden/golden.hpp"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " <golden_dir> [name_filter]\n";
    return 2;
  }
  const std::string filter = argc == 3 ? argv[2] : "";
  return effattn::golden::run_golden(argv[1], filter, std::cout);
}
