"""ComfyUI's ``/object_info`` for the core nodes the shipped SDXL workflow uses (CheckpointLoaderSimple,
LoraLoader, CLIPTextEncode, EmptyLatentImage, VAEDecode), as a real ComfyUI (Oct 2025, frontend 1.27)
served them; the model lists hold the release names the workflow uses.

Used where no ComfyUI is running: ``tools/build_workflows.py`` lays the graph out from it and the workflow
tests validate the graph against it (the graph runs for real in tests/test_comfy_sampling_comfyui.py).
These nodes do not run outside ComfyUI.
"""

from __future__ import annotations

import json

CORE_INFO: dict = json.loads(r"""
{
 "CheckpointLoaderSimple": {
  "input": {
   "required": {
    "ckpt_name": [
     [
      "sd_xl_base_1.0.safetensors"
     ],
     {
      "tooltip": "The name of the checkpoint (model) to load."
     }
    ]
   }
  },
  "input_order": {
   "required": [
    "ckpt_name"
   ]
  },
  "output": [
   "MODEL",
   "CLIP",
   "VAE"
  ],
  "output_is_list": [
   false,
   false,
   false
  ],
  "output_name": [
   "MODEL",
   "CLIP",
   "VAE"
  ],
  "name": "CheckpointLoaderSimple",
  "display_name": "Load Checkpoint",
  "description": "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
  "category": "loaders",
  "output_node": false,
  "output_tooltips": [
   "The model used for denoising latents.",
   "The CLIP model used for encoding text prompts.",
   "The VAE model used for encoding and decoding images to and from latent space."
  ]
 },
 "LoraLoader": {
  "input": {
   "required": {
    "model": [
     "MODEL",
     {
      "tooltip": "The diffusion model the LoRA will be applied to."
     }
    ],
    "clip": [
     "CLIP",
     {
      "tooltip": "The CLIP model the LoRA will be applied to."
     }
    ],
    "lora_name": [
     [
      "pixel-art-xl.safetensors"
     ],
     {
      "tooltip": "The name of the LoRA."
     }
    ],
    "strength_model": [
     "FLOAT",
     {
      "default": 1.0,
      "min": -100.0,
      "max": 100.0,
      "step": 0.01,
      "tooltip": "How strongly to modify the diffusion model. This value can be negative."
     }
    ],
    "strength_clip": [
     "FLOAT",
     {
      "default": 1.0,
      "min": -100.0,
      "max": 100.0,
      "step": 0.01,
      "tooltip": "How strongly to modify the CLIP model. This value can be negative."
     }
    ]
   }
  },
  "input_order": {
   "required": [
    "model",
    "clip",
    "lora_name",
    "strength_model",
    "strength_clip"
   ]
  },
  "output": [
   "MODEL",
   "CLIP"
  ],
  "output_is_list": [
   false,
   false
  ],
  "output_name": [
   "MODEL",
   "CLIP"
  ],
  "name": "LoraLoader",
  "display_name": "Load LoRA",
  "description": "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
  "category": "loaders",
  "output_node": false,
  "output_tooltips": [
   "The modified diffusion model.",
   "The modified CLIP model."
  ]
 },
 "CLIPTextEncode": {
  "input": {
   "required": {
    "text": [
     "STRING",
     {
      "multiline": true,
      "dynamicPrompts": true,
      "tooltip": "The text to be encoded."
     }
    ],
    "clip": [
     "CLIP",
     {
      "tooltip": "The CLIP model used for encoding the text."
     }
    ]
   }
  },
  "input_order": {
   "required": [
    "text",
    "clip"
   ]
  },
  "output": [
   "CONDITIONING"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "CONDITIONING"
  ],
  "name": "CLIPTextEncode",
  "display_name": "CLIP Text Encode (Prompt)",
  "description": "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
  "category": "conditioning",
  "output_node": false,
  "output_tooltips": [
   "A conditioning containing the embedded text used to guide the diffusion model."
  ]
 },
 "EmptyLatentImage": {
  "input": {
   "required": {
    "width": [
     "INT",
     {
      "default": 512,
      "min": 16,
      "max": 16384,
      "step": 8,
      "tooltip": "The width of the latent images in pixels."
     }
    ],
    "height": [
     "INT",
     {
      "default": 512,
      "min": 16,
      "max": 16384,
      "step": 8,
      "tooltip": "The height of the latent images in pixels."
     }
    ],
    "batch_size": [
     "INT",
     {
      "default": 1,
      "min": 1,
      "max": 4096,
      "tooltip": "The number of latent images in the batch."
     }
    ]
   }
  },
  "input_order": {
   "required": [
    "width",
    "height",
    "batch_size"
   ]
  },
  "output": [
   "LATENT"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "LATENT"
  ],
  "name": "EmptyLatentImage",
  "display_name": "Empty Latent Image",
  "description": "Create a new batch of empty latent images to be denoised via sampling.",
  "category": "latent",
  "output_node": false,
  "output_tooltips": [
   "The empty latent image batch."
  ]
 },
 "VAEDecode": {
  "input": {
   "required": {
    "samples": [
     "LATENT",
     {
      "tooltip": "The latent to be decoded."
     }
    ],
    "vae": [
     "VAE",
     {
      "tooltip": "The VAE model used for decoding the latent."
     }
    ]
   }
  },
  "input_order": {
   "required": [
    "samples",
    "vae"
   ]
  },
  "output": [
   "IMAGE"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "IMAGE"
  ],
  "name": "VAEDecode",
  "display_name": "VAE Decode",
  "description": "Decodes latent images back into pixel space images.",
  "category": "latent",
  "output_node": false,
  "output_tooltips": [
   "The decoded image."
  ]
 }
}
""")


def with_core(info: dict) -> dict:
    """``info`` plus the core entries it lacks (a running ComfyUI's own entries win)."""
    return {**CORE_INFO, **info}
