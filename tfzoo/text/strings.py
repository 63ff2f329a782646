"""What tfzoo's tokenizer layers share."""


def accept_strings(layer):
    """Lets a Keras layer take strings and lists of them as its inputs.

    Keras converts a layer's inputs to float tensors; preprocessing layers need them as
    they are. These are the switches keras-hub's own preprocessing layers set.
    """
    layer._convert_input_args = False
    layer._allow_non_tensor_positional_args = True
