// Sweep files for `bitnet sweep`: a base config, overrides for every run, named variants (a list
// and/or a grid) and seeds, expanded into one override list per run. The sweep keys live here.
#pragma once
#include <string>
#include <vector>

namespace trainers::config {

// One run of a sweep: its name (the run directory under out_dir) and its --set overrides
// (the sweep's common ones first, then the variant's, the grid point's and the seed's).
struct SweepRun {
  std::string name;
  std::vector<std::string> sets;  // everything, out_dir last
  std::vector<std::string> own;   // the variant's, grid point's and seed's (what tells runs apart)
  // The model the run starts from (bitnet train --init-from): "" = none; a run of this sweep
  // (init_run: its name, which comes earlier in `runs`) or a model file (init_file).
  std::string init_run, init_file;
};

struct Sweep {
  std::string path;     // the sweep file
  std::string base;     // the base training config (relative to the working directory)
  std::string out_dir;  // default runs/sweeps/<file stem>
  std::vector<SweepRun> runs;
};

// Keys (docs/TRAINING.md, "Sweeps"):
//   base: CONFIG.yaml                 required
//   out_dir: DIR                      default runs/sweeps/<stem of the sweep file>
//   set: [key=value, ...]             applied to every run
//   variants: [{name: N, set: [key=value, ...], init_from: V}, ...]   init_from (optional): a
//                                     variant named earlier (its run of the same grid point
//                                     and seed, finished first) or a model file
//   grid: {key: [v1, v2, ...], ...}   every combination, named "key=v" (last key segment)
//   seeds: [s1, s2, ...]              every run once per seed (training.seed and data.seed),
//                                     named "..._seed=s"
// Runs are variants x grid points x seeds, in that order; names are unique and made of
// [A-Za-z0-9._=+-]. Errors are ConfigError "file:line: key: what is wrong". `extra` (--set on
// the command line) is appended to every run's overrides. Every run's config is loaded and
// validated here, so a bad variant is refused before anything runs.
Sweep load_sweep(const std::string& path, const std::vector<std::string>& extra = {});

}  // namespace trainers::config
