// SVG plots a browser shows: training/validation loss, LR and WD, with stage switches marked.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace trainers::train {

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> pts;  // (x, y)
  bool dots = false;
};
struct Marker {
  double x;
  std::string label;
};
struct Panel {
  std::string title, ylabel;
  std::vector<Series> series;
  bool log_y = false;
};

// Stacked panels sharing the x axis (steps); markers are dashed vertical lines on every panel.
std::string render_svg(const std::vector<Panel>& panels, const std::vector<Marker>& markers,
                       const std::string& xlabel, int width = 900, int panel_height = 300);
void write_file(const std::string& path, const std::string& text);  // throws on failure
// The SVG rendered to a PNG of its pixel size (librsvg + cairo, found at configure time).
bool png_supported();
void write_png(const std::string& path, const std::string& svg);  // throws on failure

}  // namespace trainers::train
