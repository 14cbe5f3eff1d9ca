"""Export a checkpoint to ONNX (optionally int8) for fast CPU inference with onnxruntime.

python export.py --checkpoint OUT/fold_0/best --output OUT/fold_0/onnx [--int8]
then: python inference.py --checkpoint OUT/fold_0/onnx --input test.jsonl --output submission.jsonl
"""

from nikl_emotion.commands.cli import command_parser, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a best/ folder written by train.py")
    parser.add_argument("--output", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--int8", action="store_true", help="dynamically quantize the linear layers to int8")
    args = parser.parse_args(argv)
    quiet_libraries()
    from nikl_emotion.backends.export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.output, args.int8)
    print(f"exported {args.checkpoint} to {args.output} ({'int8' if info['int8'] else 'fp32'}, opset {info['opset']})")
    return 0
