/* A C host that decodes greedily with an lmc-compiled decode step (`lmc compile --decode N`):
 * the proof that the derived step and the runtime's decoder are usable from C alone.
 *
 * Usage: generate LIBRARY.so WEIGHTS NEW_TOKENS PROMPT_ID...
 *        generate LIBRARY.so WEIGHTS NEW_TOKENS --context CONTEXT.so START_ID PROMPT_ID...
 *
 * The second form is an encoder-decoder's: the prompt goes to the context library (the
 * encoder, run once), whose outputs and the prompt's all-ones mask are the decoder's context,
 * and decoding starts from START_ID. Prints the NEW_TOKENS greedy tokens on one line. Then checks that a step past the capacity is
 * an error (not a crash) and prints its message to stderr. Errors go to stderr as
 * `error: <status>: <message>` with exit code 2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmc_runtime.h"

#define MAX_PROMPT 64

static int fail(int32_t status) {
    fprintf(stderr, "error: %d: %s\n", status, lmc_last_error());
    return 2;
}

/* The index of the largest logit at the last position (the first on ties). */
static int64_t last_argmax(const LmcOutputs *logits) {
    LmcTensor t;
    if (lmc_outputs_get(logits, 0, &t) != LMC_OK || t.rank != 3 || t.dtype != LMC_F32) return -1;
    const float *row = (const float *)t.data + (t.shape[1] - 1) * t.shape[2];
    int64_t best = 0;
    for (int64_t k = 1; k < t.shape[2]; k++) {
        if (row[k] > row[best]) best = k;
    }
    return best;
}

/* Runs the encoder (the context library) on the prompt and gives the decoder its outputs and
 * the prompt's mask. */
static int32_t set_context(const char *library, const char *weights, LmcDecoder *decoder, const int64_t *prompt, size_t length) {
    LmcModel *encoder = NULL;
    int32_t status = lmc_model_open(library, weights, &encoder);
    if (status != LMC_OK) return status;
    int64_t ones[MAX_PROMPT];
    for (size_t i = 0; i < length; i++) ones[i] = 1;
    int64_t shape[2] = {1, (int64_t)length};
    LmcTensor inputs[2] = {
        {"input_ids", LMC_I64, 2, shape, prompt, length * sizeof(int64_t)},
        {"attention_mask", LMC_I64, 2, shape, ones, length * sizeof(int64_t)},
    };
    LmcOutputs *outputs = NULL;
    status = lmc_model_run(encoder, inputs, 2, &outputs);
    if (status == LMC_OK) {
        LmcTensor context[MAX_PROMPT];
        size_t n = lmc_outputs_count(outputs);
        for (size_t i = 0; i < n && status == LMC_OK && i + 1 < MAX_PROMPT; i++) status = lmc_outputs_get(outputs, i, &context[i]);
        context[n] = inputs[1];
        if (status == LMC_OK) status = lmc_decoder_set_context(decoder, context, n + 1);
        lmc_outputs_free(outputs);
    }
    lmc_model_free(encoder);
    return status;
}

int main(int argc, char **argv) {
    int encoder_decoder = argc > 6 && strcmp(argv[4], "--context") == 0;
    int first = encoder_decoder ? 7 : 4;
    if (argc <= first || argc - first > MAX_PROMPT) {
        fprintf(stderr, "usage: %s LIBRARY.so WEIGHTS NEW_TOKENS [--context CONTEXT.so START_ID] PROMPT_ID...\n", argv[0]);
        return 2;
    }
    int new_tokens = atoi(argv[3]);
    int64_t prompt[MAX_PROMPT];
    size_t length = (size_t)(argc - first);
    for (size_t i = 0; i < length; i++) prompt[i] = atoll(argv[first + i]);

    LmcModel *model = NULL;
    int32_t status = lmc_model_open(argv[1], argv[2], &model);
    if (status != LMC_OK) return fail(status);
    LmcDecoder *decoder = NULL;
    status = lmc_decoder_new(model, 1, &decoder);
    if (status != LMC_OK) return fail(status);
    if (encoder_decoder) {
        status = set_context(argv[5], argv[2], decoder, prompt, length);
        if (status != LMC_OK) return fail(status);
        /* The decoder starts from its start token; the prompt was the encoder's. */
        prompt[0] = atoll(argv[6]);
        length = 1;
    }

    LmcOutputs *logits = NULL;
    status = lmc_decoder_step(model, decoder, prompt, length, &logits);
    for (int made = 0; status == LMC_OK && made < new_tokens; made++) {
        int64_t next = last_argmax(logits);
        lmc_outputs_free(logits);
        logits = NULL;
        printf(made == 0 ? "%lld" : " %lld", (long long)next);
        if (made + 1 < new_tokens) status = lmc_decoder_step(model, decoder, &next, 1, &logits);
    }
    printf("\n");
    if (status != LMC_OK) return fail(status);

    /* Fill the caches to their capacity, then one more step must fail cleanly. */
    int64_t token = 1;
    while (status == LMC_OK) {
        status = lmc_decoder_step(model, decoder, &token, 1, &logits);
        lmc_outputs_free(logits);
        logits = NULL;
    }
    fprintf(stderr, "past the capacity at position %lld: %d: %s\n", (long long)lmc_decoder_position(decoder), status, lmc_last_error());
    lmc_decoder_free(decoder);
    lmc_model_free(model);
    return status == LMC_ERR_INPUT ? 0 : 3;
}
