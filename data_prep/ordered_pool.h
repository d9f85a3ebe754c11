// Runs work(i) for i in [0, n) on `threads` workers and hands results to consume(i, result) on the
// calling thread strictly in order of i, with at most `window` results in flight (bounded memory).
// Output is therefore independent of the thread count. Exceptions from work(i) surface at consume(i).
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace shardtune::prep {

template <class R>
void ordered_parallel(size_t n, int threads, size_t window, const std::function<R(size_t)>& work,
                      const std::function<void(size_t, R&&)>& consume) {
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) consume(i, work(i));
    return;
  }
  struct Slot {
    std::optional<R> value;
    std::exception_ptr error;
    bool ready = false;
  };
  std::vector<Slot> slots(window);
  std::mutex mu;
  std::condition_variable cv;
  size_t next = 0, consumed = 0;
  bool stop = false;

  auto worker = [&] {
    for (;;) {
      size_t i;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stop || next >= n || next < consumed + window; });
        if (stop || next >= n) return;
        i = next++;
      }
      Slot s;
      try {
        s.value.emplace(work(i));
      } catch (...) {
        s.error = std::current_exception();
      }
      s.ready = true;
      {
        std::lock_guard<std::mutex> lk(mu);
        slots[i % window] = std::move(s);
      }
      cv.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  auto join = [&] {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& t : pool) t.join();
  };
  try {
    for (size_t i = 0; i < n; ++i) {
      Slot s;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return slots[i % window].ready; });
        s = std::move(slots[i % window]);
        slots[i % window] = Slot{};
      }
      if (s.error) std::rethrow_exception(s.error);
      consume(i, std::move(*s.value));
      {
        std::lock_guard<std::mutex> lk(mu);
        consumed = i + 1;
      }
      cv.notify_all();
    }
  } catch (...) {
    join();
    throw;
  }
  join();
}

}  // namespace shardtune::prep
