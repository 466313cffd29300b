// The `bitnet` command-line entry point: dispatches sub-commands.
#include <cstdio>
#include <cstring>
#include <string>

namespace {
void usage() {
  std::puts(
      "usage: bitnet <command> [args]\n"
      "commands:\n"
      "  train CONFIG     train a model (not yet implemented)\n"
      "  version          print the version");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "version") {
    std::puts("bitnet 0.1.0");
    return 0;
  }
  if (cmd == "train") {
    std::puts("bitnet train: not yet implemented (the trainer lands with the training issue)");
    return 0;
  }
  std::fprintf(stderr, "bitnet: unknown command '%s'\n", cmd.c_str());
  usage();
  return 2;
}
