// NFC = canonical decomposition, canonical ordering by combining class, then canonical composition,
// with Hangul handled algorithmically. Most text needs none of it: nfc_quick_yes() finds that out by
// looking up only code points >= U+0300 in the table of characters that may change.
#include "nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "unicode.h"

namespace shardtune::tok {

namespace {

struct CccRange {
  uint32_t first, last;
  uint8_t ccc;
};
struct DecompEntry {
  uint32_t cp;
  uint32_t offset;
  uint8_t len;
};
struct CompEntry {
  uint32_t a, b, c;
};
struct Range {
  uint32_t first, last;
};

#include "nfc_tables.inc"

constexpr uint32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
constexpr uint32_t LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

template <class T, size_t N>
const T* find_range(const T (&table)[N], uint32_t cp) {
  auto it = std::upper_bound(std::begin(table), std::end(table), cp, [](uint32_t v, const T& r) { return v < r.first; });
  if (it == std::begin(table)) return nullptr;
  --it;
  return cp <= it->last ? &*it : nullptr;
}

int ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  const CccRange* r = find_range(kCcc, cp);
  return r ? r->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= SBase && cp < SBase + SCount) {
    uint32_t s = cp - SBase;
    out.push_back(LBase + s / NCount);
    out.push_back(VBase + (s % NCount) / TCount);
    if (s % TCount) out.push_back(TBase + s % TCount);
    return;
  }
  if (cp >= 0xC0) {
    auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                               [](const DecompEntry& e, uint32_t v) { return e.cp < v; });
    if (it != std::end(kDecomp) && it->cp == cp) {
      out.insert(out.end(), kDecompPool + it->offset, kDecompPool + it->offset + it->len);
      return;
    }
  }
  out.push_back(cp);
}

// Primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
    return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
    return a + (b - TBase);
  auto it = std::lower_bound(std::begin(kComp), std::end(kComp), std::make_pair(a, b),
                             [](const CompEntry& e, const std::pair<uint32_t, uint32_t>& v) {
                               return e.a != v.first ? e.a < v.first : e.b < v.second;
                             });
  if (it != std::end(kComp) && it->a == a && it->b == b) return it->c;
  return 0;
}

}  // namespace

bool nfc_quick_yes(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0xCC) {  // lead bytes below 0xCC encode code points below U+0300: always stable
      i += utf8_len(c);
      continue;
    }
    uint32_t cp = utf8_next(s, i);
    if (find_range(kMaybe, cp)) return false;
  }
  return true;
}

std::string nfc(std::string_view s) {
  if (nfc_quick_yes(s)) return std::string(s);
  std::vector<uint32_t> d;
  d.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(utf8_next(s, i), d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc_of(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc_of(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
    i = j;
  }
  // Canonical composition.
  std::vector<uint32_t> out;
  out.reserve(d.size());
  long starter = -1;
  int last_cc = -1;  // -1: nothing appended since the starter
  for (uint32_t c : d) {
    int cc = ccc_of(c);
    if (starter >= 0 && (last_cc == -1 || (last_cc != 0 && last_cc < cc))) {
      if (uint32_t comp = compose(out[static_cast<size_t>(starter)], c)) {
        out[static_cast<size_t>(starter)] = comp;
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<long>(out.size());
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  std::string result;
  result.reserve(s.size());
  for (uint32_t c : out) utf8_append(result, c);
  return result;
}

}  // namespace shardtune::tok
