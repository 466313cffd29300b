// Minimal SVG line-plot renderer (axes, ticks, legends, markers) and its PNG rendering (librsvg).
#include "trainers/train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#ifdef BITNET_HAVE_RSVG
#include <cairo.h>
#include <librsvg/rsvg.h>
#endif

namespace trainers::train {
namespace {
std::string fmt(double v) {
  char b[32];
  if (v != 0 && (std::abs(v) < 1e-2 || std::abs(v) >= 1e5))
    std::snprintf(b, sizeof b, "%.1e", v);
  else
    std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}
std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else
      o += c;
  }
  return o;
}
}  // namespace

std::string render_svg(const std::vector<Panel>& panels, const std::vector<Marker>& markers,
                       const std::string& xlabel, int W, int PH) {
  const double L = 70, R = 20, T = 30, B = 40;
  const int H = int(panels.size()) * PH;
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' "
       "fill='white'/>\n";
  double xmin = std::numeric_limits<double>::max(), xmax = std::numeric_limits<double>::lowest();
  for (auto& p : panels)
    for (auto& s : p.series)
      for (auto& [x, y] : s.pts) xmin = std::min(xmin, x), xmax = std::max(xmax, x);
  if (xmin > xmax) xmin = 0, xmax = 1;
  if (xmax == xmin) xmax = xmin + 1;
  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    const double y0 = double(pi) * PH + T, h = PH - T - B, w = W - L - R;
    double ymin = std::numeric_limits<double>::max(), ymax = std::numeric_limits<double>::lowest();
    auto ty = [&](double v) { return p.log_y ? std::log10(std::max(v, 1e-12)) : v; };
    for (auto& s : p.series)
      for (auto& [x, y] : s.pts)
        if (std::isfinite(y)) ymin = std::min(ymin, ty(y)), ymax = std::max(ymax, ty(y));
    if (ymin > ymax) ymin = 0, ymax = 1;
    if (ymax == ymin) ymax = ymin + 1;
    const double pad = 0.05 * (ymax - ymin);
    ymin = (ymin >= 0 && ymin - pad < 0) ? 0 : ymin - pad;  // non-negative data keeps a 0 floor
    ymax += pad;
    auto X = [&](double x) { return L + (x - xmin) / (xmax - xmin) * w; };
    auto Y = [&](double y) { return y0 + h - (ty(y) - ymin) / (ymax - ymin) * h; };
    o << "<text x='" << L << "' y='" << y0 - 10 << "' font-weight='bold'>" << esc(p.title)
      << "</text>\n";
    o << "<rect x='" << L << "' y='" << y0 << "' width='" << w << "' height='" << h
      << "' fill='none' stroke='#888'/>\n";
    for (int i = 0; i <= 4; ++i) {
      const double yv = ymin + (ymax - ymin) * i / 4, py = y0 + h - h * i / 4;
      const double label = p.log_y ? std::pow(10.0, yv) : yv;
      o << "<line x1='" << L << "' x2='" << L + w << "' y1='" << py << "' y2='" << py
        << "' stroke='#eee'/><text x='" << L - 5 << "' y='" << py + 4 << "' text-anchor='end'>"
        << fmt(label) << "</text>\n";
      const double xv = xmin + (xmax - xmin) * i / 4;
      o << "<text x='" << X(xv) << "' y='" << y0 + h + 15 << "' text-anchor='middle'>" << fmt(xv)
        << "</text>\n";
    }
    o << "<text x='15' y='" << y0 + h / 2 << "' transform='rotate(-90 15 " << y0 + h / 2
      << ")' text-anchor='middle'>" << esc(p.ylabel) << "</text>\n";
    if (pi + 1 == panels.size())
      o << "<text x='" << L + w / 2 << "' y='" << y0 + h + 32 << "' text-anchor='middle'>"
        << esc(xlabel) << "</text>\n";
    for (auto& m : markers) {
      if (m.x < xmin || m.x > xmax) continue;
      o << "<line x1='" << X(m.x) << "' x2='" << X(m.x) << "' y1='" << y0 << "' y2='" << y0 + h
        << "' stroke='#c33' stroke-dasharray='5,4'/><text x='" << X(m.x) + 3 << "' y='" << y0 + 12
        << "' fill='#c33'>" << esc(m.label) << "</text>\n";
    }
    int li = 0;
    size_t longest = 0;
    for (auto& s : p.series) longest = std::max(longest, s.name.size());
    const double legend_w = 24 + 7.0 * double(longest);  // ~7 px per character at 12 px
    for (auto& s : p.series) {
      if (s.dots) {
        for (auto& [x, y] : s.pts)
          if (std::isfinite(y))
            o << "<circle cx='" << X(x) << "' cy='" << Y(y) << "' r='3' fill='" << s.color
              << "'/>\n";
      } else if (!s.pts.empty()) {
        o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.5' points='";
        for (auto& [x, y] : s.pts)
          if (std::isfinite(y)) o << X(x) << ',' << Y(y) << ' ';
        o << "'/>\n";
      }
      o << "<rect x='" << L + w - legend_w << "' y='" << y0 + 8 + li * 16
        << "' width='12' height='3' fill='" << s.color << "'/><text x='" << L + w - legend_w + 18
        << "' y='" << y0 + 13 + li * 16 << "'>" << esc(s.name) << "</text>\n";
      ++li;
    }
  }
  o << "</svg>\n";
  return o.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
  f << text;
  if (!f.flush()) throw std::runtime_error("write to '" + path + "' failed");
}

bool png_supported() {
#ifdef BITNET_HAVE_RSVG
  return true;
#else
  return false;
#endif
}

void write_png(const std::string& path, const std::string& svg) {
#ifdef BITNET_HAVE_RSVG
  GError* err = nullptr;
  RsvgHandle* h =
      rsvg_handle_new_from_data(reinterpret_cast<const guint8*>(svg.data()), svg.size(), &err);
  auto fail = [&](const std::string& what) {
    const std::string msg = err ? std::string(err->message) : std::string("unknown error");
    if (err) g_error_free(err);
    if (h) g_object_unref(h);
    throw std::runtime_error("cannot write '" + path + "': " + what + ": " + msg);
  };
  if (!h) fail("librsvg did not parse the SVG");
  gdouble w = 0, hgt = 0;
  if (!rsvg_handle_get_intrinsic_size_in_pixels(h, &w, &hgt)) fail("the SVG has no pixel size");
  cairo_surface_t* surf = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, int(w), int(hgt));
  cairo_t* cr = cairo_create(surf);
  const RsvgRectangle viewport{0, 0, w, hgt};
  const bool ok = rsvg_handle_render_document(h, cr, &viewport, &err);
  cairo_destroy(cr);
  const cairo_status_t st =
      ok ? cairo_surface_write_to_png(surf, path.c_str()) : CAIRO_STATUS_SUCCESS;
  cairo_surface_destroy(surf);
  if (!ok) fail("librsvg could not render the SVG");
  g_object_unref(h);
  if (st != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error("cannot write '" + path + "': " + cairo_status_to_string(st));
#else
  (void)svg;
  throw std::runtime_error("cannot write '" + path +
                           "': this build has no PNG support (librsvg2-dev was not found)");
#endif
}

}  // namespace trainers::train
