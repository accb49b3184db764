// SentencePiece models (tokenizer.model) behind the C interface of
// tok_impl.h: a thin wrapper over the SentencePiece C++ library. No C++
// leaves this file: every entry point is extern "C" and catches every
// exception.
//
// Encoding is the library's. Decoding is done piece by piece here (the
// common layer in tokenizer.c concatenates the pieces, tracks the
// "first piece" state and replaces invalid UTF-8) so that streaming and
// whole-sequence decoding share one code path; the rules reproduce
// SentencePieceProcessor::Decode:
//   - control pieces (<s>, </s>) give nothing;
//   - the unknown piece gives trainer_spec.unk_surface (" \xE2\x81\x87 ");
//   - byte pieces <0xNN> give the raw byte;
//   - other pieces give their text with U+2581 replaced by a space, and the
//     first piece of the output loses one leading U+2581 when the model adds
//     a dummy prefix (or removes extra whitespace).
//
// Before the bytes reach the library they are walked here as protobuf wire
// format: the fields above are read, self-test samples are dropped (the
// library would log their failures to stderr) and features that qrun cannot
// reproduce or that the library would trust blindly are refused (a
// denormalizer, an unknown model type, a precompiled normalization trie
// that points outside itself).

#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "tok_impl.h"
}

namespace {

const char kSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space
const size_t kSpaceLen = 3;

enum class Kind : unsigned char { Normal, Control, Unknown, Byte };

struct Surface {
    Kind kind;
    unsigned char byte;   // Kind::Byte
    bool leading_space;   // the piece starts with U+2581
    std::string text;     // Kind::Normal: the text with spaces
};

struct SpmState {
    sentencepiece::SentencePieceProcessor sp;
    std::vector<Surface> surface;
    std::string unk_surface = " \xE2\x81\x87 ";
    bool strip_first = true;  // add_dummy_prefix || remove_extra_whitespaces
    // Whether text may be encoded in pieces cut at single spaces (see
    // chunk_safe()); encoding is then linear in the text length, where
    // libsentencepiece's whole-text encode grows worse than linearly.
    bool chunkable = false;
};

// Text longer than this is encoded in pieces when the model allows it.
const size_t kChunkBytes = 4096;

// ---- protobuf wire format (just enough to read a few fields safely) --------

struct Field {
    uint32_t number;
    unsigned wire;
    uint64_t varint;       // wire 0
    const uint8_t *data;   // wire 2: payload
    size_t len;
    size_t begin, end;     // the whole field (tag included) in its message
};

class Wire {
  public:
    Wire(const uint8_t *p, size_t n) : p_(p), n_(n) {}
    // 1: a field was read; 0: end of message; -1: malformed.
    int next(Field *f) {
        if (pos_ >= n_) return 0;
        f->begin = pos_;
        uint64_t tag;
        if (!varint(&tag)) return -1;
        f->number = (uint32_t)(tag >> 3);
        f->wire = (unsigned)(tag & 7);
        if (f->number == 0 || (tag >> 3) > 0x1FFFFFFFu) return -1;
        f->data = nullptr;
        f->len = 0;
        f->varint = 0;
        switch (f->wire) {
        case 0:
            if (!varint(&f->varint)) return -1;
            break;
        case 1:
            if (n_ - pos_ < 8) return -1;
            pos_ += 8;
            break;
        case 5:
            if (n_ - pos_ < 4) return -1;
            pos_ += 4;
            break;
        case 2: {
            uint64_t len;
            if (!varint(&len) || len > n_ - pos_) return -1;
            f->data = p_ + pos_;
            f->len = (size_t)len;
            pos_ += (size_t)len;
            break;
        }
        default:
            return -1;  // groups (3, 4) are not used by sentencepiece_model.proto
        }
        f->end = pos_;
        return 1;
    }

  private:
    bool varint(uint64_t *v) {
        uint64_t r = 0;
        for (int shift = 0; shift < 70; shift += 7) {
            if (pos_ >= n_) return false;
            uint8_t c = p_[pos_++];
            if (shift == 63 && (c & 0x7E)) return false;
            r |= (uint64_t)(c & 0x7F) << shift;
            if (!(c & 0x80)) {
                *v = r;
                return true;
            }
        }
        return false;
    }
    const uint8_t *p_;
    size_t n_;
    size_t pos_ = 0;
};

// Walks every field of a message (and of the messages nested in the fields
// listed by the caller) to check the wire format. Returns false when
// malformed.
bool wire_ok(const uint8_t *p, size_t n) {
    Wire w(p, n);
    Field f;
    int r;
    while ((r = w.next(&f)) == 1) {
    }
    return r == 0;
}

uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

// The precompiled normalization rules are a darts-clone double array
// followed by a pool of NUL-terminated replacement strings; the library
// follows the array's offsets without bounds checks, so check that every
// node's children and values stay inside the blob.
bool charsmap_ok(const uint8_t *p, size_t n, std::string *why) {
    if (n < 4) {
        *why = "shorter than its 4-byte header";
        return false;
    }
    uint32_t trie_size = le32(p);
    if (trie_size > n - 4 || trie_size % 4 != 0) {
        *why = "trie size " + std::to_string(trie_size) + " does not fit";
        return false;
    }
    const uint8_t *units = p + 4;
    size_t n_units = trie_size / 4;
    const uint8_t *pool = units + trie_size;
    size_t pool_len = n - 4 - trie_size;
    if (n_units < 256) {
        *why = "trie has fewer than 256 units";
        return false;
    }
    if (pool_len == 0 || pool[pool_len - 1] != 0) {
        *why = "replacement strings are not NUL-terminated";
        return false;
    }
    for (size_t i = 0; i < n_units; i++) {
        uint32_t u = le32(units + 4 * i);
        if (u & (1u << 31)) continue;  // a value unit, never traversed as a node
        uint32_t off = (u >> 10) << ((u & (1u << 9)) >> 6);
        uint64_t child = (uint64_t)(i ^ off);
        if ((child | 0xFF) >= n_units) {
            *why = "trie unit " + std::to_string(i) + " points outside the trie";
            return false;
        }
        if ((u >> 8) & 1) {  // has a leaf: its value is an offset into the pool
            uint32_t v = le32(units + 4 * child) & 0x7FFFFFFFu;
            if (v >= pool_len) {
                *why = "trie value at unit " + std::to_string(child) +
                       " points outside the replacement strings";
                return false;
            }
        }
    }
    return true;
}

struct ModelInfo {
    std::string serialized;  // what the library loads (self-test samples dropped)
    std::string unk_surface = " \xE2\x81\x87 ";
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = true;
    bool has_charsmap = false;  // a normalization table (not identity)
    size_t n_pieces = 0;
};

qrun_status inspect_model(const uint8_t *p, size_t n, ModelInfo *mi, qerr *err) {
    const char *what = "malformed SentencePiece model";
    if (n == 0) return qerr_set(err, QRUN_ERR_FORMAT, "%s: no bytes", what);
    Wire w(p, n);
    Field f;
    int r;
    mi->serialized.reserve(n);
    while ((r = w.next(&f)) == 1) {
        if (f.number == 4 && f.wire == 2) continue;  // self_test_data: dropped
        if (f.wire == 2 && (f.number == 1 || f.number == 2 || f.number == 3 || f.number == 5) &&
            !wire_ok(f.data, f.len))
            return qerr_set(err, QRUN_ERR_FORMAT, "%s: field %u at byte %zu is not a message",
                            what, (unsigned)f.number, f.begin);
        if (f.number == 1 && f.wire == 2) {
            mi->n_pieces++;
        } else if (f.number == 2 && f.wire == 2) {  // TrainerSpec
            Wire t(f.data, f.len);
            Field g;
            while (t.next(&g) == 1) {
                if (g.number == 3 && g.wire == 0 && (g.varint < 1 || g.varint > 4))
                    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                                    "SentencePiece model: unknown model_type %llu",
                                    (unsigned long long)g.varint);
                if (g.number == 44 && g.wire == 2)
                    mi->unk_surface.assign((const char *)g.data, g.len);
            }
        } else if (f.number == 3 && f.wire == 2) {  // NormalizerSpec
            Wire t(f.data, f.len);
            Field g;
            while (t.next(&g) == 1) {
                if (g.number == 3 && g.wire == 0) mi->add_dummy_prefix = g.varint != 0;
                if (g.number == 4 && g.wire == 0) mi->remove_extra_whitespaces = g.varint != 0;
                if (g.number == 2 && g.wire == 2 && g.len > 0) {
                    mi->has_charsmap = true;
                    std::string why;
                    if (!charsmap_ok(g.data, g.len, &why))
                        return qerr_set(err, QRUN_ERR_FORMAT,
                                        "%s: normalizer precompiled_charsmap: %s", what,
                                        why.c_str());
                }
            }
        } else if (f.number == 5 && f.wire == 2) {  // denormalizer
            Wire t(f.data, f.len);
            Field g;
            while (t.next(&g) == 1)
                if (g.number == 2 && g.wire == 2 && g.len > 0)
                    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                                    "SentencePiece model has a denormalizer, which qrun does "
                                    "not implement");
        }
        mi->serialized.append((const char *)p + f.begin, f.end - f.begin);
    }
    if (r < 0)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: bad protobuf wire format in the top-level "
                        "message (file of %zu bytes)", what, n);
    if (mi->n_pieces == 0)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: no pieces", what);
    return QRUN_OK;
}

int byte_of_piece(const std::string &s) {
    // "<0xNN>"
    if (s.size() != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

std::string replace_spaces(const std::string &s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        if (s.compare(i, kSpaceLen, kSpace) == 0) {
            out.push_back(' ');
            i += kSpaceLen;
        } else {
            out.push_back(s[i++]);
        }
    }
    return out;
}

// ---- the tok_impl functions -------------------------------------------------

// Encode one piece of text with the library, appending the ids.
qrun_status encode_piece(SpmState *st, const char *text, size_t len, std::vector<int> &ids,
                         tok_ids *out, qerr *err) {
    auto status = st->sp.Encode(std::string_view(text, len), &ids);
    if (!status.ok())
        return qerr_set(err, QRUN_ERR_INTERNAL, "SentencePiece encode failed: %s",
                        status.ToString().c_str());
    for (int id : ids)
        if (!tok_ids_push(out, (int32_t)id))
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "SentencePiece encode: out of memory");
    return QRUN_OK;
}

// The end of the next piece starting at `from`: a single space (its
// neighbours not spaces) at or after from + kChunkBytes, or `len`.
size_t next_cut(const char *text, size_t len, size_t from) {
    for (size_t i = from + kChunkBytes; i + 1 < len; i++)
        if (text[i] == ' ' && text[i - 1] != ' ' && text[i + 1] != ' ') return i;
    return len;
}

qrun_status spm_encode(void *state, const char *text, size_t len, tok_ids *out, qerr *err) {
    SpmState *st = static_cast<SpmState *>(state);
    try {
        std::vector<int> ids;
        if (!st->chunkable || len <= kChunkBytes) return encode_piece(st, text, len, ids, out, err);
        // The space at a cut is dropped: the next piece's dummy prefix puts
        // the same U+2581 back, and no piece of the vocabulary spans it.
        for (size_t from = 0; from < len;) {
            size_t cut = next_cut(text, len, from);
            qrun_status s = encode_piece(st, text + from, cut - from, ids, out, err);
            if (s != QRUN_OK) return s;
            from = cut + 1;
        }
        return QRUN_OK;
    } catch (const std::bad_alloc &) {
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "SentencePiece encode: out of memory");
    } catch (const std::exception &e) {
        return qerr_set(err, QRUN_ERR_INTERNAL, "SentencePiece encode: %s", e.what());
    } catch (...) {
        return qerr_set(err, QRUN_ERR_INTERNAL, "SentencePiece encode: unknown exception");
    }
}

qrun_status spm_decode_piece(void *state, int32_t id, bool first, tok_bytes *out, qerr *err) {
    SpmState *st = static_cast<SpmState *>(state);
    if (id < 0 || (size_t)id >= st->surface.size())
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "token id %ld out of range [0, %zu)",
                        (long)id, st->surface.size());
    const Surface &s = st->surface[(size_t)id];
    bool ok = true;
    switch (s.kind) {
    case Kind::Control:
        break;
    case Kind::Unknown:
        ok = tok_bytes_append(out, st->unk_surface.data(), st->unk_surface.size());
        break;
    case Kind::Byte: {
        char c = (char)s.byte;
        ok = tok_bytes_append(out, &c, 1);
        break;
    }
    case Kind::Normal:
        if (first && st->strip_first && s.leading_space)
            ok = tok_bytes_append(out, s.text.data() + 1, s.text.size() - 1);
        else
            ok = tok_bytes_append(out, s.text.data(), s.text.size());
        break;
    }
    if (!ok) return qerr_set(err, QRUN_ERR_NO_MEMORY, "decode: out of memory");
    return QRUN_OK;
}

const char *spm_id_to_piece(void *state, int32_t id) {
    SpmState *st = static_cast<SpmState *>(state);
    if (id < 0 || (size_t)id >= st->surface.size()) return nullptr;
    try {
        return st->sp.IdToPiece((int)id).c_str();
    } catch (...) {
        return nullptr;
    }
}

int32_t spm_piece_to_id(void *state, const char *piece) {
    SpmState *st = static_cast<SpmState *>(state);
    if (!piece) return -1;
    try {
        int id = st->sp.PieceToId(piece);  // the unknown id when absent
        if (id < 0 || (size_t)id >= st->surface.size()) return -1;
        if (st->sp.IdToPiece(id) != piece) return -1;
        return (int32_t)id;
    } catch (...) {
        return -1;
    }
}

void spm_destroy(void *state) { delete static_cast<SpmState *>(state); }

const tok_impl spm_impl = {
    spm_encode, spm_decode_piece, spm_id_to_piece, spm_piece_to_id, spm_destroy,
};

void free_added(tok_added *a, size_t n) {
    for (size_t i = 0; i < n; i++) free(a[i].content);
    free(a);
}

qrun_status load(tok_tokenizer *t, const uint8_t *data, size_t size, qerr *err) {
    ModelInfo mi;
    qrun_status st = inspect_model(data, size, &mi, err);
    if (st != QRUN_OK) return st;

    std::unique_ptr<SpmState> s(new SpmState());
    auto status = s->sp.LoadFromSerializedProto(mi.serialized);
    if (!status.ok())
        return qerr_set(err, QRUN_ERR_FORMAT, "malformed SentencePiece model: %s",
                        status.ToString().c_str());
    int n = s->sp.GetPieceSize();
    if (n <= 0 || n > INT32_MAX / 2)
        return qerr_set(err, QRUN_ERR_FORMAT, "malformed SentencePiece model: %d pieces", n);
    s->unk_surface = mi.unk_surface;
    s->strip_first = mi.add_dummy_prefix || mi.remove_extra_whitespaces;
    s->surface.resize((size_t)n);

    std::vector<int> special_ids;
    for (int id = 0; id < n; id++) {
        Surface &sf = s->surface[(size_t)id];
        const std::string &piece = s->sp.IdToPiece(id);
        sf.kind = Kind::Normal;
        sf.byte = 0;
        sf.leading_space = false;
        if (s->sp.IsControl(id)) {
            sf.kind = Kind::Control;
            special_ids.push_back(id);
        } else if (s->sp.IsUnknown(id)) {
            sf.kind = Kind::Unknown;
            special_ids.push_back(id);
        } else if (s->sp.IsByte(id)) {
            int b = byte_of_piece(piece);
            if (b < 0)
                return qerr_set(err, QRUN_ERR_FORMAT,
                                "malformed SentencePiece model: byte piece %d is \"%.40s\"", id,
                                piece.c_str());
            sf.kind = Kind::Byte;
            sf.byte = (unsigned char)b;
        } else {
            sf.leading_space = piece.compare(0, kSpaceLen, kSpace) == 0;
            sf.text = replace_spaces(piece);
        }
    }

    // Special = control pieces and the unknown piece: what LlamaTokenizer
    // lists as special (bos, eos, unk) and skips with skip_special_tokens.
    // Their text is matched under TOK_PARSE_SPECIAL, as LlamaTokenizerFast's
    // added tokens ("<unk>", "<s>", "</s>": special, not normalized, no
    // stripping).
    unsigned char *is_special = (unsigned char *)calloc((size_t)n, 1);
    tok_added *arr = (tok_added *)calloc(special_ids.size() + 1, sizeof *arr);
    size_t n_added = 0;
    if (!is_special || !arr) {
        free(is_special);
        free(arr);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "SentencePiece model: out of memory");
    }
    for (int id : special_ids) {
        is_special[id] = 1;
        const std::string &piece = s->sp.IdToPiece(id);
        if (piece.empty()) continue;
        char *c = (char *)malloc(piece.size() + 1);
        if (!c) {
            free_added(arr, n_added);
            free(is_special);
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "SentencePiece model: out of memory");
        }
        memcpy(c, piece.data(), piece.size());
        c[piece.size()] = 0;
        tok_added *a = &arr[n_added++];
        a->content = c;
        a->id = (int32_t)id;
        a->special = true;
        a->lstrip = a->rstrip = a->single_word = a->normalized = false;
    }

    // Encoding in pieces cut at single spaces gives the same ids as one
    // encode when (1) normalization is the identity and keeps every space,
    // so a cut space becomes exactly the dummy prefix U+2581 of the next
    // piece, and (2) no vocabulary piece has U+2581 after another
    // character, so no piece can span a "x▁y" boundary (true of Llama-2).
    bool chunkable = mi.add_dummy_prefix && !mi.remove_extra_whitespaces && !mi.has_charsmap;
    for (int id = 0; chunkable && id < n; id++) {
        if (s->surface[(size_t)id].kind != Kind::Normal) continue;
        const std::string &piece = s->sp.IdToPiece(id);
        size_t lead = 0;
        while (piece.compare(lead, kSpaceLen, kSpace) == 0) lead += kSpaceLen;
        if (piece.find(kSpace, lead) != std::string::npos) chunkable = false;
    }
    s->chunkable = chunkable;

    t->impl = &spm_impl;
    t->vocab_size = (int32_t)n;
    t->special.bos = s->sp.bos_id();
    t->special.eos = s->sp.eos_id();
    t->special.pad = s->sp.pad_id();
    t->special.unk = s->sp.unk_id();
    t->add_bos = true;
    t->is_special = is_special;
    t->added = arr;
    t->n_added = n_added;
    // With remove_extra_whitespaces the library keeps stripping leading
    // spaces after a first piece that decoded to nothing.
    t->spm_bos_ws_sticky = mi.remove_extra_whitespaces;
    t->state = s.release();
    return QRUN_OK;
}

}  // namespace

extern "C" qrun_status tok_spm_load(tok_tokenizer *t, const void *data, size_t size, qerr *err) {
    if (!t || (!data && size))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_spm_load: NULL argument");
    try {
        return load(t, static_cast<const uint8_t *>(data), size, err);
    } catch (const std::bad_alloc &) {
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "SentencePiece model: out of memory");
    } catch (const std::exception &e) {
        return qerr_set(err, QRUN_ERR_FORMAT, "malformed SentencePiece model: %s", e.what());
    } catch (...) {
        return qerr_set(err, QRUN_ERR_FORMAT, "malformed SentencePiece model: unknown exception");
    }
}
