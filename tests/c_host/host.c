/* A C host for an lmc-compiled model: the proof that a generated library and the runtime's C API
 * are usable from C alone.
 *
 * Usage: host LIBRARY.so WEIGHTS < inputs.txt
 *
 * Built by the test suite with -DMODEL_HEADER='"libx.h"' -DMODEL_ABI_VERSION=LMC_<MODEL>_ABI_VERSION,
 * so it includes the header generated beside the library and checks it against the runtime.
 *
 * inputs.txt holds one tensor per line: `name dtype rank dim... value...` (dtype f32|i64|i32).
 * Every output is printed the same way, values with %.9g, so the test can compare them with
 * `lmc run`. Errors go to stderr as `error: <status>: <message>` with exit code 2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmc_runtime.h"
#include MODEL_HEADER

#define MAX_INPUTS 16

static int fail(int32_t status) {
    fprintf(stderr, "error: %d: %s\n", status, lmc_last_error());
    return 2;
}

static size_t dtype_size(int32_t dtype) { return dtype == LMC_I64 ? 8 : 4; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBRARY.so WEIGHTS < inputs.txt\n", argv[0]);
        return 2;
    }
    if (lmc_runtime_abi_version() != MODEL_ABI_VERSION) {
        fprintf(stderr, "error: header ABI %u, runtime ABI %u\n", (unsigned)MODEL_ABI_VERSION, (unsigned)lmc_runtime_abi_version());
        return 2;
    }
    /* The library is linked in too: its own symbols are callable directly. */
    if (lmc_abi_version() != MODEL_ABI_VERSION || strstr(lmc_manifest(), "\"entries\"") == NULL) {
        fprintf(stderr, "error: the linked library does not match its header\n");
        return 2;
    }

    LmcModel *model = NULL;
    int32_t status = lmc_model_open(argv[1], argv[2], &model);
    if (status != LMC_OK) return fail(status);

    LmcTensor inputs[MAX_INPUTS];
    char names[MAX_INPUTS][128];
    int64_t shapes[MAX_INPUTS][8];
    size_t n = 0;
    char dtype_name[8];
    while (n < MAX_INPUTS && scanf("%127s %7s %d", names[n], dtype_name, &inputs[n].rank) == 3) {
        LmcTensor *t = &inputs[n];
        t->name = names[n];
        t->dtype = strcmp(dtype_name, "f32") == 0 ? LMC_F32 : strcmp(dtype_name, "i64") == 0 ? LMC_I64 : LMC_I32;
        if (t->rank < 0 || t->rank > 8) return 2;
        size_t count = 1;
        for (int d = 0; d < t->rank; d++) {
            if (scanf("%lld", (long long *)&shapes[n][d]) != 1) return 2;
            count *= (size_t)shapes[n][d];
        }
        t->shape = shapes[n];
        t->data_bytes = count * dtype_size(t->dtype);
        void *data = malloc(t->data_bytes ? t->data_bytes : 1);
        for (size_t i = 0; i < count; i++) {
            if (t->dtype == LMC_F32) {
                if (scanf("%f", &((float *)data)[i]) != 1) return 2;
            } else {
                long long v;
                if (scanf("%lld", &v) != 1) return 2;
                if (t->dtype == LMC_I64) ((int64_t *)data)[i] = v; else ((int32_t *)data)[i] = (int32_t)v;
            }
        }
        t->data = data;
        n++;
    }

    LmcOutputs *outputs = NULL;
    status = lmc_model_run(model, inputs, n, &outputs);
    for (size_t i = 0; i < n; i++) free((void *)inputs[i].data);
    if (status != LMC_OK) {
        lmc_model_free(model);
        return fail(status);
    }
    for (size_t i = 0; i < lmc_outputs_count(outputs); i++) {
        LmcTensor out;
        status = lmc_outputs_get(outputs, i, &out);
        if (status != LMC_OK) return fail(status);
        size_t count = 1;
        printf("%s f32 %d", out.name, out.rank);
        for (int d = 0; d < out.rank; d++) {
            printf(" %lld", (long long)out.shape[d]);
            count *= (size_t)out.shape[d];
        }
        for (size_t k = 0; k < count; k++) printf(" %.9g", ((const float *)out.data)[k]);
        printf("\n");
    }
    /* Asking for an output that does not exist is an error, not a crash. */
    LmcTensor missing;
    if (lmc_outputs_get(outputs, 1000, &missing) == LMC_OK) return 3;
    lmc_outputs_free(outputs);
    lmc_model_free(model);
    return 0;
}
