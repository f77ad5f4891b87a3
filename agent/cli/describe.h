// The facts of one checkpoint, as `crest show` reports them (and later verbs that summarize a
// checkpoint they wrote or read). describe_checkpoint() gathers them into one JSON document;
// print_checkpoint() renders that same document for people, so --json and the report can never
// disagree on a fact.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "storage/schema.h"
#include "storage/store.h"

namespace crest::cli {

// `file` is the checkpoint's path as the user should see it (for the size and messages).
nlohmann::json describe_checkpoint(const storage::CheckpointReader& reader,
                                   const std::string& file);
void print_checkpoint(std::ostream& out, const nlohmann::json& doc, bool verbose);

// Names of the schema's enums and flag words, as the report and JSON spell them.
std::string_view vma_kind_name(uint32_t kind);
std::string_view file_kind_name(uint32_t kind);
std::string prot_text(uint32_t prot, uint32_t map_flags);  // "rw-p"
std::string open_flags_text(uint32_t flags);               // "O_RDWR|O_APPEND"

// Pages of `owner` present in [start, end) according to a sorted page index.
uint64_t pages_in_range(const std::vector<schema::PageRun>& index, uint64_t owner, uint64_t start,
                        uint64_t end);

}  // namespace crest::cli
