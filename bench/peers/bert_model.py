"""What the BERT scripts share: transformers' BertModel (base, random weights) returning its last
hidden state, and its ONNX export, so every script measures the same model."""
import os


def last_hidden_state_model():
    """BERT-base with seeded random weights, as a module of (input_ids, attention_mask,
    token_type_ids) returning `last_hidden_state`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(), add_pooling_layer=False).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState().eval()


def export_onnx(model, ids, path):
    """Exports `model` for inputs shaped like `ids` (batch and length dynamic) to `path`."""
    import torch

    with torch.no_grad():
        torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          dynamic_axes={n: {0: "b", 1: "t"} for n in ["input_ids", "attention_mask", "token_type_ids"]},
                          dynamo=False)
