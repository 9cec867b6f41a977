/*
 * lmc_runtime.h - C API of the lmc runtime (liblmc_runtime.so).
 *
 * Loads a module that `lmc compile` generated, binds its safetensors weights, checks inputs
 * against the module's manifest and runs it. Every function that can fail returns an int32_t
 * status (LMC_OK on success); the message of the calling thread's last failure is returned by
 * lmc_last_error(). No function aborts or unwinds into the caller.
 *
 * Tensors are little-endian, contiguous and row-major.
 */
#ifndef LMC_RUNTIME_H
#define LMC_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version of modules this runtime loads (also returned by lmc_runtime_abi_version). */
#define LMC_RUNTIME_ABI_VERSION 4

/* Status codes. */
#define LMC_OK 0
/* A NULL pointer, a bad dtype code or rank, data whose size does not match its shape. */
#define LMC_ERR_INVALID_ARGUMENT 1
/* The weights are unreadable or do not fit the module (missing tensor, wrong dtype or shape). */
#define LMC_ERR_WEIGHTS 2
/* The module was generated for another ABI version: recompile it with this lmc. */
#define LMC_ERR_ABI_MISMATCH 3
/* The module library cannot be loaded or does not export what the ABI requires. */
#define LMC_ERR_LIBRARY 4
/* The inputs do not fit the manifest (names, dtypes, shapes, symbolic sizes, index ranges). */
#define LMC_ERR_INPUT 5
/* A bug in the runtime or the module. */
#define LMC_ERR_INTERNAL 6

/* Element type codes (LmcTensor.dtype). */
#define LMC_F32 0
#define LMC_I64 1
#define LMC_I32 2

/* The largest rank an LmcTensor may have. */
#define LMC_MAX_RANK 8

/* A loaded model with its weights bound. Opaque; from lmc_model_open, freed by lmc_model_free. */
typedef struct LmcModel LmcModel;

/* The outputs of one run. Opaque; from lmc_model_run, freed by lmc_outputs_free. */
typedef struct LmcOutputs LmcOutputs;

/* A tensor: an input to lmc_model_run, or an output read with lmc_outputs_get. */
typedef struct {
    /* The tensor's name as the manifest gives it (NUL-terminated UTF-8). */
    const char *name;
    /* LMC_F32, LMC_I64 or LMC_I32. An input declared i64 may be given as i32 and vice versa. */
    int32_t dtype;
    /* Number of dimensions, 0..LMC_MAX_RANK. */
    int32_t rank;
    /* `rank` non-negative sizes (may be NULL when rank is 0). */
    const int64_t *shape;
    /* The elements (may be NULL when data_bytes is 0); any alignment. */
    const void *data;
    /* Must equal the product of the sizes times the element size. */
    size_t data_bytes;
} LmcTensor;

/*
 * The message of the calling thread's last failed call, or "" if its last call succeeded.
 * Never NULL. Valid until the thread's next call into this API.
 */
const char *lmc_last_error(void);

/* The ABI version of modules this runtime can load (LMC_RUNTIME_ABI_VERSION). */
uint32_t lmc_runtime_abi_version(void);

/*
 * Loads the module library at `library_path`, binds weights from `weights_path` (a .safetensors
 * file, or a directory holding model.safetensors or a sharded checkpoint with
 * model.safetensors.index.json; NULL for a module without parameters) and stores the model in
 * `*out`. On failure `*out` is set to NULL. Every parameter must be present with the manifest's
 * dtype and shape; extra tensors are ignored.
 */
int32_t lmc_model_open(const char *library_path, const char *weights_path, LmcModel **out);

/* Frees a model. NULL is ignored. No run may be in progress on it. */
void lmc_model_free(LmcModel *model);

/*
 * The model's manifest (names, dtypes and shapes of parameters, inputs and outputs; symbolic
 * dimensions and their limits) as JSON. Owned by the model; NULL if `model` is NULL.
 */
const char *lmc_model_manifest(const LmcModel *model);

/*
 * Runs the model's `forward` entry point on `n_inputs` inputs, given in any order, each exactly
 * once. The inputs are copied and checked against the manifest before the model runs. On
 * success `*out` holds the outputs, in manifest order; on failure it is set to NULL. A model
 * may be run from several threads at once.
 */
int32_t lmc_model_run(const LmcModel *model, const LmcTensor *inputs, size_t n_inputs,
                      LmcOutputs **out);

/* The number of outputs; 0 if `outputs` is NULL. */
size_t lmc_outputs_count(const LmcOutputs *outputs);

/*
 * Describes output `index` in `*out`. The name, shape and data pointers are owned by `outputs`
 * and stay valid until lmc_outputs_free. An index >= lmc_outputs_count is
 * LMC_ERR_INVALID_ARGUMENT.
 */
int32_t lmc_outputs_get(const LmcOutputs *outputs, size_t index, LmcTensor *out);

/* Frees outputs. NULL is ignored. */
void lmc_outputs_free(LmcOutputs *outputs);

/*
 * Decoding. A library from `lmc compile --decode CAPACITY` holds the decode step the compiler
 * derives from a model's forward; its caches (described in the manifest's "decode" section) are
 * owned by an LmcDecoder, which carries one batch of sequences from step to step.
 */
typedef struct LmcDecoder LmcDecoder;

/*
 * Starts decoding `batch` sequences with `model` (a decode-step library): allocates its caches,
 * zero-filled. On failure `*out` is NULL (a forward's library is LMC_ERR_INVALID_ARGUMENT).
 */
int32_t lmc_decoder_new(const LmcModel *model, size_t batch, LmcDecoder **out);

/*
 * Runs `n` new tokens of every sequence (`tokens`: batch * n ids, row-major) at the decoder's
 * next positions: the first step is the prompt, later ones usually one token each. On success
 * `*out` holds one tensor, the logits [batch, n, vocabulary]. Decoding past the capacity, or
 * with another model than the decoder was made for, is an error that leaves the decoder as it
 * was. A decoder is used by one thread at a time.
 */
int32_t lmc_decoder_step(const LmcModel *model, LmcDecoder *decoder, const int64_t *tokens,
                         size_t n, LmcOutputs **out);

/*
 * Gives the decoder inputs it passes whole to every step: for an encoder-decoder, the outputs
 * of its context library (`lmc compile --decode` writes it beside the step as *.context.so; run
 * it once per prompt with lmc_model_run) and the encoder's attention mask. Copied; a later call
 * replaces them all.
 */
int32_t lmc_decoder_set_context(LmcDecoder *decoder, const LmcTensor *inputs, size_t n_inputs);

/* The next position a decoder writes (the tokens run so far); -1 if `decoder` is NULL. */
int64_t lmc_decoder_position(const LmcDecoder *decoder);

/* Frees a decoder and its caches. NULL is ignored. */
void lmc_decoder_free(LmcDecoder *decoder);

#ifdef __cplusplus
}
#endif

#endif /* LMC_RUNTIME_H */
