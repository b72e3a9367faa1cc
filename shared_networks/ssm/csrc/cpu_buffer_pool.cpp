// Copyright (c) the shared_networks contributors.
// Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
// the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
// A CPU allocator that keeps freed memory mapped for the length of a sliding-window inference
// (shared_networks.ssm.cpu_inference.cpu_buffer_pool).
//
// PyTorch's CPU allocator hands every large tensor fresh memory from the system (glibc maps blocks above 32 MB and
// unmaps them on free), so each of the hundred-megabyte activations of a 128^3 window is page-faulted and zeroed by
// the kernel again: about a million minor faults per SegMamba forward. While the pool is entered it is PyTorch's CPU
// allocator for requests of 1 MB and more (smaller ones go to the allocator that was in place before). Memory is
// handed out in units of 2 MB (one huge page). A freed tensor's units stay mapped and idle; a request takes the
// smallest idle run of units that is long enough (split if longer), and when none is, the kernel moves idle units into
// one new contiguous range with mremap (page tables move, the pages and their contents stay) and maps fresh memory only
// for what the idle units do not cover. So the pool never holds more than the largest amount the tensors held at once,
// and from the second window on a forward runs on memory that is already mapped. When the last user leaves, the idle
// units go back to the system and the previous allocator is restored; units still held by live tensors are unmapped
// when those tensors die. Linux only (mremap); elsewhere entering does nothing.

#include <torch/extension.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

#if defined(__linux__)

constexpr size_t kUnit = size_t(1) << 21;      // 2 MB: one huge page, the granularity of every range the pool maps
constexpr size_t kSmallest = size_t(1) << 20;  // below this, PyTorch's own allocator

class CPUBufferPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kSmallest) return previous_->allocate(n);
    const size_t units = (n + kUnit - 1) / kUnit;
    std::lock_guard<std::mutex> lock(mutex_);
    char* ptr = take_run(units);
    if (ptr == nullptr) ptr = gather(units, n);
    lent_.emplace(ptr, units);
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate's pointers come back here too, including the small ones the previous allocator made
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_ == 0) {
      c10::Allocator* current = c10::GetAllocator(c10::DeviceType::CPU);
      if (current != this) previous_ = current;
      c10::SetAllocator(c10::DeviceType::CPU, this);
    }
    users_ += 1;
    return true;
  }

  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(users_ > 0, "the CPU buffer pool was left more often than it was entered");
    users_ -= 1;
    if (users_ > 0) return;
    if (c10::GetAllocator(c10::DeviceType::CPU) == this) c10::SetAllocator(c10::DeviceType::CPU, previous_);
    for (const auto& run : idle_) munmap(run.first, run.second * kUnit);
    idle_.clear();
    idle_units_ = 0;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t lent_units = 0;
    for (const auto& block : lent_) lent_units += block.second;
    return {int64_t(users_), int64_t(lent_units * kUnit), int64_t(idle_units_ * kUnit), int64_t(fresh_units_ * kUnit),
            int64_t(reused_units_ * kUnit)};
  }

 private:
  static void release(void* ptr);

  // the smallest idle run of at least `units`, its first units taken (the rest stays idle); nullptr if none
  char* take_run(size_t units) {
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->second >= units && (best == idle_.end() || it->second < best->second)) best = it;
    }
    if (best == idle_.end()) return nullptr;
    char* start = best->first;
    const size_t length = best->second;
    idle_.erase(best);
    if (length > units) idle_.emplace(start + units * kUnit, length - units);
    idle_units_ -= units;
    reused_units_ += units;
    return start;
  }

  // a new range of `units`: idle units moved into it (largest runs first), fresh memory for the rest
  char* gather(size_t units, size_t n) {
    // reserve an aligned address range first: the moved and fresh units replace the reservation
    const size_t span = units * kUnit;
    void* raw = mmap(nullptr, span + kUnit, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(raw != MAP_FAILED, "CPU buffer pool: cannot reserve ", span, " bytes of address space for a tensor of ",
                n, " bytes");
    char* base = reinterpret_cast<char*>(raw);
    char* start = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(base) + kUnit - 1) / kUnit * kUnit);
    if (start > base) munmap(base, start - base);
    if (start + span < base + span + kUnit) munmap(start + span, base + kUnit - start);
    size_t done = 0;
    while (done < units && !idle_.empty()) {
      auto largest = idle_.begin();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (it->second > largest->second) largest = it;
      }
      char* from = largest->first;
      const size_t length = largest->second, take = std::min(length, units - done);
      idle_.erase(largest);
      if (length > take) idle_.emplace(from + take * kUnit, length - take);
      move_units(from, start + done * kUnit, take);
      idle_units_ -= take;
      reused_units_ += take;
      done += take;
    }
    if (done < units) {
      void* fresh = mmap(start + done * kUnit, (units - done) * kUnit, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (fresh == MAP_FAILED) {
        munmap(start, span);  // the moved units too: the tensors that freed them are gone
        TORCH_CHECK(false, "CPU buffer pool: not enough memory: you tried to allocate ", n, " bytes.");
      }
#if defined(MADV_HUGEPAGE)
      madvise(fresh, (units - done) * kUnit, MADV_HUGEPAGE);  // as PyTorch's THP_MEM_ALLOC_ENABLE=1 does
#endif
      fresh_units_ += units - done;
    }
    return start;
  }

  // mremap needs a source inside one mapping; a coalesced run may span several, and each unit lies in one
  void move_units(char* from, char* to, size_t units) {
    if (mremap(from, units * kUnit, units * kUnit, MREMAP_MAYMOVE | MREMAP_FIXED, to) != MAP_FAILED) return;
    for (size_t i = 0; i < units; ++i) {
      TORCH_CHECK(mremap(from + i * kUnit, kUnit, kUnit, MREMAP_MAYMOVE | MREMAP_FIXED, to + i * kUnit) != MAP_FAILED,
                  "CPU buffer pool: mremap failed moving an idle 2 MB unit");
    }
  }

  void add_idle(char* start, size_t units) {
    idle_units_ += units;
    auto next = idle_.lower_bound(start);
    if (next != idle_.end() && next->first == start + units * kUnit) {
      units += next->second;
      next = idle_.erase(next);
    }
    if (next != idle_.begin()) {
      auto before = std::prev(next);
      if (before->first + before->second * kUnit == start) {
        before->second += units;
        return;
      }
    }
    idle_.emplace(start, units);
  }

  void give_back(void* ptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = lent_.find(static_cast<char*>(ptr));
      if (it != lent_.end()) {
        const size_t units = it->second;
        lent_.erase(it);
        if (users_ > 0) {
          add_idle(static_cast<char*>(ptr), units);
        } else {
          munmap(ptr, units * kUnit);
        }
        return;
      }
    }
    previous_->raw_deleter()(ptr);  // a small block raw_allocate took from the previous allocator
  }

  std::mutex mutex_;
  c10::Allocator* previous_ = nullptr;
  int users_ = 0;
  std::map<char*, size_t> idle_;              // start -> units, runs of idle units by address, adjacent ones merged
  std::unordered_map<char*, size_t> lent_;    // start -> units, ranges held by tensors
  size_t idle_units_ = 0, fresh_units_ = 0, reused_units_ = 0;
};

// never destroyed: tensors may outlive the module's static destructors
CPUBufferPool& pool() {
  static CPUBufferPool* instance = new CPUBufferPool();
  return *instance;
}

void CPUBufferPool::release(void* ptr) { pool().give_back(ptr); }

bool enter() { return pool().enter(); }
void leave() { pool().leave(); }
std::vector<int64_t> stats() { return pool().stats(); }

#else  // no mremap: the pool is not available, and entering it changes nothing

bool enter() { return false; }
void leave() {}
std::vector<int64_t> stats() { return {0, 0, 0, 0, 0}; }

#endif

}  // namespace

void register_cpu_buffer_pool(pybind11::module_& m) {
  m.def("cpu_buffer_pool_enter", &enter,
        "make the pool PyTorch's CPU allocator (counted: nested and concurrent users share one pool); False where it "
        "is not available");
  m.def("cpu_buffer_pool_leave", &leave,
        "leave the pool; the last user restores the previous CPU allocator and unmaps the idle memory");
  m.def("cpu_buffer_pool_stats", &stats,
        "[users, bytes held by tensors, idle bytes, bytes mapped fresh, bytes reused] (the last two since the process "
        "started)");
}
